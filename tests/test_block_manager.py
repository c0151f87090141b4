"""BlockManager's prefix-cache bookkeeping on its own (the engine tests drive it end to end)."""
from __future__ import annotations

from rustinfer.runtime.block_manager import BlockManager


def test_a_duplicate_block_takes_over_when_the_cached_one_is_evicted():
    """Two equal prompts admitted in one step each get their own blocks, so the second's
    block is not registered (its hash is taken). If the first's block is evicted while the
    second still runs, the second's identical block must become the cached one."""
    bm = BlockManager(num_blocks=4, block_size=4)
    tokens = [1, 2, 3, 4, 5]
    a, _ = bm.allocate_prompt(tokens)
    b, _ = bm.allocate_prompt(tokens)                  # no hit yet: nothing is computed
    state = {id(a): ([], [], 0), id(b): ([], [], 0)}

    def register(table, num_computed):
        hashes, pending, start = state[id(table)]
        start = bm.register_computed(table, tokens, num_computed, hashes, start, pending)
        state[id(table)] = (hashes, pending, start)

    register(a, 4)
    register(b, 4)
    assert bm.hash_of[b[0]] is None and state[id(b)][1] == [0]      # taken by a's block
    first = a[0]
    bm.free(a)
    evict = [bm._take() for _ in range(2)]             # later work evicts a's cached block
    bm.free(evict)
    assert bm.hash_of[first] is None
    register(b, 5)                                     # b's next step
    assert bm.hash_of[b[0]] is not None and state[id(b)][1] == []
    _, cached = bm.allocate_prompt(tokens + [9])
    assert cached == 4


def test_each_full_block_is_hashed_once_across_steps():
    bm = BlockManager(num_blocks=8, block_size=4)
    tokens = list(range(1, 30))
    table, _ = bm.allocate_prompt(tokens)
    hashes, pending, start = [], [], 0
    for n in range(1, len(tokens) + 1):
        start = bm.register_computed(table, tokens, n, hashes, start, pending)
    assert len(hashes) == len(tokens) // 4 == start
    assert all(bm.hash_of[b] is not None for b in table[:start])
