"""The cpu target's KV rows: paged block tables mapped onto contiguous per-sequence rows.

KV cache layout. ORT's GroupQueryAttention wants each sequence's cache as one
contiguous row [kv_heads, max_seq, head_dim] of a [B, kv_heads, max_seq,
head_dim] tensor, with the step's B sequences in B consecutive rows. The engine
speaks paged blocks (StepInputs.block_tables). The executor bridges the two:

- It owns `max_seqs` rows per layer. A row is a contiguous copy of what some
  block table's first `length` positions hold; `RowMap` remembers, per row, the
  blocks it mirrors and its length.
- A step's sequence with `cached` tokens continues the row whose blocks start
  with the sequence's first ceil(cached / block_size) blocks and whose length is
  `cached`. A sequence with cached == 0 takes a free row (least recently used).
  A sequence whose prefix another row holds at a greater length (prefix caching,
  forks) gets a fresh row with that prefix copied in; when no other row is free
  (a full batch) and that row is idle, it takes the row itself, cut to the prefix.
- Writing a block invalidates every other row that mirrored it (the row is cut
  before that block), so a row never claims content a block no longer holds.
- No row holds the prefix any more (its row was recycled for another sequence,
  while the engine's prefix cache still holds the blocks): the executor
  recomputes it into a free row from the token ids it recorded for each block
  position it wrote. Only a block it never saw written (changed outside this
  executor) is a RuntimeError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Row:
    blocks: list[int] = field(default_factory=list)   # blocks mirrored, in table order
    length: int = 0                                   # positions [0, length) are valid
    used: int = 0                                     # step counter of the last use


class RowMap:
    """Which cache row holds which block-table prefix (see the module docstring)."""

    def __init__(self, rows: int, block_size: int):
        self.rows = [_Row() for _ in range(rows)]
        self.bs = block_size
        self.owner: dict[int, _Row] = {}              # block -> the row that last wrote it
        self.last: dict[tuple[int, int], int] = {}    # (first block, length) -> row, last step
        self.tick = 0

    def assign(self, seqs: list[tuple[int, int, list[int]]]):
        """seqs: (new tokens, cached, block table). Returns (rows, copies[(src, dst, length)]);
        src None: no row holds the prefix, recompute positions [0, length) into dst.

        Two passes: first every sequence that continues a row keeps it, then the others
        take free rows, so a new sequence never takes a row a later one continues. A
        sequence whose prefix only an idle row holds, when no other row is free (a full
        batch), takes that row itself (cut to the prefix) instead of a copy of it."""
        taken: set[int] = set()
        rows: list[int | None] = [None] * len(seqs)
        copies = []
        for k, (n, cached, table) in enumerate(seqs):
            if cached == 0:
                continue
            nb = math.ceil(cached / self.bs)
            prefix = table[:nb]
            r = self.last.get((table[0], cached))    # the usual case: last step's row
            if r is None or r in taken or self.rows[r].length != cached \
                    or self.rows[r].blocks[:nb] != prefix:
                r = self._find(prefix, cached, taken, exact=True)
            if r is not None:
                taken.add(r)
                rows[k] = r
        for k, (n, cached, table) in enumerate(seqs):
            if rows[k] is not None:
                continue
            if cached == 0:
                r = self._free(taken)
                self.rows[r] = _Row()
            else:
                nb = math.ceil(cached / self.bs)
                prefix = table[:nb]
                src = self._find(prefix, cached, set(), exact=False)
                if src is not None and src not in taken and not self._has_free(taken | {src}):
                    r = src                          # the only row left: use it in place
                else:
                    r = self._free(taken if src is None else taken | {src})
                    copies.append((src, r, cached))
                self.rows[r] = _Row(list(prefix), cached)
            taken.add(r)
            rows[k] = r
        return rows, copies

    def commit(self, seqs, rows) -> None:
        """After the step: each row now mirrors its table up to the new length."""
        self.tick += 1
        self.last = {}
        for (n, cached, table), r in zip(seqs, rows):
            self.last[(table[0], cached + n)] = r
            row, ctx = self.rows[r], cached + n
            for i in range(cached // self.bs, math.ceil(ctx / self.bs)):
                block = table[i]
                other = self.owner.get(block)
                if other is not None and other is not row and block in other.blocks:
                    cut = other.blocks.index(block)       # its copy of this block is stale
                    other.blocks = other.blocks[:cut]
                    other.length = min(other.length, cut * self.bs)
                self.owner[block] = row
            row.blocks = list(table[:math.ceil(ctx / self.bs)])
            row.length, row.used = ctx, self.tick

    def swap(self, a: int, b: int) -> None:
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]

    def _find(self, prefix, cached, taken, exact):
        nb = len(prefix)
        for i, row in enumerate(self.rows):
            if i in taken or row.length < cached or (exact and row.length != cached):
                continue
            if row.blocks[:1] == prefix[:1] and row.blocks[:nb] == prefix:
                return i
        return None

    def _has_free(self, taken) -> bool:
        return len(taken) < len(self.rows)

    def _free(self, taken) -> int:
        free = [i for i in range(len(self.rows)) if i not in taken]
        if not free:
            raise RuntimeError(f"cpu target: a step has more sequences than its {len(self.rows)} "
                               "KV rows; raise the max_seqs option")
        empty = [i for i in free if self.rows[i].length == 0]
        return empty[0] if empty else min(free, key=lambda i: self.rows[i].used)
