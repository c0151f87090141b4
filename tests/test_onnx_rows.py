"""The cpu target's KV rows: paged block tables mapped onto ORT's contiguous per-sequence rows."""
from __future__ import annotations

import os
import pathlib

import numpy as np

import pytest

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime.onnx_rows import RowMap
from test_onnx_cpu import BS, close, ids, load


def test_rowmap_continues_forks_and_invalidates():
    rows = RowMap(3, block_size=4)
    a = (6, 0, [7, 8])
    (ra,), copies = rows.assign([a])
    rows.commit([a], [ra])
    # continuation: same prefix, same length
    assert rows.assign([(1, 6, [7, 8])]) == ([ra], [])
    # a fork sharing block 7 (4 tokens) gets a new row with those 4 positions copied
    (rb,), copies = rows.assign([(2, 4, [7, 9])])
    assert rb != ra and copies == [(ra, rb, 4)]
    rows.commit([(2, 4, [7, 9])], [rb])
    # another sequence rewrites block 8: row a no longer mirrors it, so it is cut to 4 tokens
    c = (4, 0, [8])
    (rc,), _ = rows.assign([c])
    rows.commit([c], [rc])
    assert rows.rows[ra].length == 4 and rows.rows[ra].blocks == [7]
    # no row holds [7, 8] up to 6 any more: a free row, to be recomputed (src None)
    (rd,), copies = rows.assign([(1, 6, [7, 8])])
    assert copies == [(None, rd, 6)]


def test_rowmap_full_batch_with_a_prefix_hit():
    """Every row is needed and the only row holding a prefix hit's blocks is idle (its
    sequence finished): the hit takes that row in place, instead of failing the step
    (which, under the server, failed every request in flight)."""
    rows = RowMap(2, block_size=4)
    a = (8, 0, [0, 1])
    (ra,), _ = rows.assign([a])
    rows.commit([a], [ra])
    new, hit = (3, 0, [5]), (2, 4, [0, 7])
    got, copies = rows.assign([new, hit])
    assert got == [1 - ra, ra] and copies == []
    assert rows.rows[ra].length == 4 and rows.rows[ra].blocks == [0]
    # a sequence that continues a row keeps it even when a new one comes first
    rows.commit([new, hit], got)
    assert rows.assign([(1, 0, [9]), (1, 6, [0, 7])]) == ([1 - ra, ra], [])


def test_full_batch_prefix_hit_in_place_matches_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ref, cpu = load(tmp_path / "m", "reference"), load(tmp_path / "m", "cpu", max_seqs=2)
    vocab = ref.graph.symbols["vocab"]
    shared = ids(vocab, BS + 2, 1)
    steps = [[(shared[:BS], 0, [3, 4])], [(shared[BS:], BS, [3, 4])],   # then it finishes
             [(ids(vocab, 3, 2), 0, [5]), (ids(vocab, 5, 3), BS, [3, 6])]]
    for seqs in steps:
        want = ref.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        got = cpu.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        assert close(got, want)
    assert cpu.recomputed == 0


def test_prefix_shared_blocks_match_reference(tmp_path, monkeypatch):
    """Two sequences share a full prefix block (as with prefix caching): the second one's
    row is forked from the first's."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ref, cpu = load(tmp_path / "m", "reference"), load(tmp_path / "m", "cpu", max_seqs=3)
    vocab = ref.graph.symbols["vocab"]
    shared, a_tail, b_tail = ids(vocab, BS, 1), ids(vocab, 5, 2), ids(vocab, 7, 3)
    steps = [[(shared[:10], 0, [3, 4])], [(shared[10:] + a_tail, 10, [3, 4])],
             [(b_tail, BS, [3, 6]), ([a_tail[0]], BS + 5, [3, 4])],
             [([b_tail[0]], BS + 7, [3, 6]), ([a_tail[1]], BS + 6, [3, 4])]]
    for seqs in steps:
        want = ref.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        got = cpu.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        assert close(got, want)


def test_more_sequences_in_a_step_than_rows_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    cpu = load(tmp_path / "m", "cpu", max_seqs=1)
    with pytest.raises(RuntimeError, match="max_seqs"):
        cpu.forward(StepInputs.for_sequences([([1, 2, 3], 0, [0]), ([4, 5], 0, [1])], BS))


def test_recycled_row_is_recomputed(tmp_path, monkeypatch):
    """With one row, a second sequence evicts the first; when the first continues (its
    blocks still cached by the engine) its prefix is recomputed from the recorded tokens,
    across prefill chunks, and the logits match the reference."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ref, cpu = load(tmp_path / "m", "reference"), load(tmp_path / "m", "cpu", max_seqs=1)
    vocab = ref.graph.symbols["vocab"]
    first = ids(vocab, 2 * BS + 3, 1)                  # 35 tokens > max_tokens (16): 3 chunks
    steps = [[(first[:BS], 0, [0, 1, 2])], [(first[BS:2 * BS], BS, [0, 1, 2])],
             [(first[2 * BS:], 2 * BS, [0, 1, 2])],
             [(ids(vocab, 4, 2), 0, [5])],                # evicts the first sequence's row
             [(ids(vocab, 1, 3), len(first), [0, 1, 2])]]  # continues it: recomputed
    for seqs in steps:
        want = ref.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        got = cpu.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        assert close(got, want)
    assert cpu.recomputed == len(first)
    # a block this executor never saw written cannot be recomputed
    with pytest.raises(RuntimeError, match="written outside"):
        cpu.forward(StepInputs.for_sequences([([1], 3, [9])], BS))


def test_physical_cores_from_cpuinfo(tmp_path):
    from rustinfer.runtime.cpu_cores import cpuinfo_cores, physical_cores

    # 2 sockets x 2 cores x 2 hyperthreads = 8 logical CPUs, 4 cores
    blocks = [f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {(i // 2) % 2}\n"
              for i in range(8)]
    (tmp_path / "cpuinfo").write_text("\n".join(blocks))
    assert cpuinfo_cores(tmp_path / "cpuinfo") == 4
    assert cpuinfo_cores(tmp_path / "missing") is None
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def _resident_kib(array) -> int:
    """Resident KiB of the mappings that overlap `array`'s bytes (Linux /proc/self/smaps;
    huge pages may split one allocation into several mappings)."""
    start, end = array.ctypes.data, array.ctypes.data + array.nbytes
    rss, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < end and start < hi
        elif inside and head == "Rss:":
            rss += int(line.split()[1])
    return rss


@pytest.mark.skipif(not pathlib.Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_kv_cache_pages_become_resident_4k_at_a_time():
    """The cpu target's caches: touching one position per 2 MiB (one head's run of a row
    at 8,192 positions x 64) must not fault in whole 2 MiB huge pages (np.zeros asks for
    them: 64 MiB resident here instead of ~128 KiB)."""
    from rustinfer.runtime.onnx_executor import _lazy_zeros

    cache = _lazy_zeros(16 * 2**20)                     # 64 MiB of float32
    cache[::2**19] = 1.0                                # 32 touches, 2 MiB apart
    assert _resident_kib(cache) <= 32 * 4 * 4           # a few 4 KiB pages each, at most
    # (reading every page maps them all, so the values are checked after)
    assert cache.dtype == np.float32 and cache.sum() == 32 and cache[1:2**19].max() == 0
