"""Paged KV cache bookkeeping: fixed-size blocks, reference counts, prefix caching.

The cache tensors live in the executor; this class only decides which block
holds which tokens. A sequence's `block_table` lists its blocks in order;
token position p lives in block_table[p // block_size] at offset
p % block_size.

Prefix caching: a block that is *full and computed* is registered under a hash
of its tokens chained with its predecessor's hash, so equal prefixes map to
equal hashes. When a new sequence is allocated, its leading full blocks are
looked up and shared (refcount + 1) instead of recomputed. A freed block keeps
its hash and content until it is reused (evicted least recently freed first),
so a repeated system prompt hits even after the previous request finished.
"""
from __future__ import annotations

from collections import OrderedDict


class NoFreeBlocks(Exception):
    """The cache is full: the scheduler preempts a sequence and retries."""


def block_hash(parent: int | None, tokens: tuple[int, ...]) -> int:
    return hash((parent, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.prefix_caching = enable_prefix_caching
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}               # hash -> block id (computed, full)
        # Blocks with refcount 0, least recently freed first; cached ones are evicted
        # only when no never-cached block is left.
        self.free_blocks: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.queries = self.hits = 0                   # prompt tokens looked up / found

    # -- accounting ----------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- allocation ------------------------------------------------------------
    def _take(self) -> int:
        if not self.free_blocks:
            raise NoFreeBlocks()
        block, _ = self.free_blocks.popitem(last=False)
        if self.hash_of[block] is not None:            # evict its cached content
            self.cached.pop(self.hash_of[block], None)
            self.hash_of[block] = None
        self.ref[block] = 1
        return block

    def allocate_prompt(self, tokens: list[int], use_cache: bool = True) -> tuple[list[int], int]:
        """Blocks for a sequence about to be prefilled: (block_table, num_cached_tokens).

        Leading full blocks found in the prefix cache are shared (unless use_cache is
        False: a sequence that must score every prompt token computes them all). At
        least the last token is always recomputed, since its logits are needed."""
        table: list[int] = []
        parent = None
        cached_tokens = 0
        limit = (len(tokens) - 1) // self.block_size      # full blocks that may be reused
        if self.prefix_caching and use_cache:
            self.queries += len(tokens)
            for i in range(limit):
                h = block_hash(parent, tuple(tokens[i * self.block_size:(i + 1) * self.block_size]))
                block = self.cached.get(h)
                if block is None:
                    break
                if self.ref[block] == 0:
                    del self.free_blocks[block]
                self.ref[block] += 1
                table.append(block)
                parent = h
                cached_tokens += self.block_size
            self.hits += cached_tokens
        try:
            for _ in range(self.blocks_needed(len(tokens)) - len(table)):
                table.append(self._take())
        except NoFreeBlocks:
            self.free(table)
            raise
        return table, cached_tokens

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= self.num_free

    def ensure_capacity(self, table: list[int], num_tokens: int) -> None:
        """Grow `table` (in place) to hold num_tokens; raises NoFreeBlocks."""
        while len(table) * self.block_size < num_tokens:
            table.append(self._take())

    def register_computed(self, table: list[int], tokens: list[int], num_computed: int,
                          hashes: list[int], start: int = 0,
                          pending: list[int] | None = None) -> int:
        """Register the blocks table[start:] that are now full and computed; returns the
        number of leading blocks looked at, the caller's `start` for the next call.

        `hashes` is the sequence's chain of full-block hashes, extended here. A hash
        depends only on the tokens, so each is computed once per sequence, and a decode
        step costs O(blocks that just filled), not O(context). A block whose tokens are
        already cached under another block (two equal prompts admitted together) is not
        registered; its index goes to `pending` and is tried again on later calls, so it
        takes over if that other block is evicted first."""
        full = num_computed // self.block_size
        if not self.prefix_caching:
            return full
        bs = self.block_size
        for i in range(len(hashes), full):
            hashes.append(block_hash(hashes[-1] if hashes else None,
                                     tuple(tokens[i * bs:(i + 1) * bs])))
        retry = list(pending) if pending else []
        if pending is not None:
            pending.clear()
        for i in retry + list(range(start, full)):
            block, h = table[i], hashes[i]
            if self.hash_of[block] is not None:
                continue
            if h in self.cached:
                if pending is not None:
                    pending.append(i)
                continue
            self.hash_of[block] = h
            self.cached[h] = block
        return max(start, full)

    def free(self, table: list[int]) -> None:
        """Release a sequence's blocks (last block first, so a prefix stays cached longest)."""
        for block in reversed(table):
            self.ref[block] -= 1
            assert self.ref[block] >= 0, f"block {block} freed twice"
            if self.ref[block] == 0:
                self.free_blocks[block] = None
                if self.hash_of[block] is None:
                    self.free_blocks.move_to_end(block, last=False)   # reuse uncached first
        table.clear()
