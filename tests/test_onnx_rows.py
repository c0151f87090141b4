"""The cpu target's KV rows: paged block tables mapped onto ORT's contiguous per-sequence rows."""
from __future__ import annotations

import pytest

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime.onnx_executor import RowMap
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
    with pytest.raises(RuntimeError, match="no KV row"):
        rows.assign([(1, 6, [7, 8])])


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


def test_more_live_sequences_than_rows_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    cpu = load(tmp_path / "m", "cpu", max_seqs=1)
    cpu.forward(StepInputs.for_sequences([([1, 2, 3], 0, [0])], BS))
    cpu.forward(StepInputs.for_sequences([([4, 5], 0, [1])], BS))       # evicts the first
    with pytest.raises(RuntimeError, match="max_seqs"):
        cpu.forward(StepInputs.for_sequences([([6], 3, [0])], BS))
