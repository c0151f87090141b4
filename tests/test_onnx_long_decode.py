"""The cpu target's long-context decode graph (decode_long.onnx) computes what model.onnx
computes: every family's tiny config, three sequences of different lengths decoding
together (each row its own length, longer than every sliding window), the same tokens
fed to both; logits within 1e-4 of the largest, and the caches they leave equal."""
from __future__ import annotations

import numpy as np
import pytest

from family_models import FAMILY_CONFIGS, all_cases, make_model, one_torch_thread  # noqa: F401
from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.step_inputs import StepInputs
from test_onnx_cpu import BS, cache_dir, load  # noqa: F401 (cache_dir: a fixture)

NEVER = 10 ** 9


def close(a, b, tol=1e-4):
    return np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


def _onnx_cases():
    """The cases the cpu target lowers: ORT's CPU GQA needs head_dim % 8 == 0 (the others
    fall back to cpu-torch, loudly, and have no decode_long graph)."""
    def head_dim(c):
        return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return ([("llama3", n) for n in PARITY_CONFIGS if head_dim(PARITY_CONFIGS[n]) % 8 == 0]
            + [(f, n) for f, n in all_cases() if head_dim(FAMILY_CONFIGS[f][n]) % 8 == 0])


@pytest.mark.parametrize("family,name", _onnx_cases(), ids=lambda x: x)
def test_long_graph_equals_gqa_graph(family, name, tmp_path, cache_dir):
    if family == "llama3":
        cfg = PARITY_CONFIGS[name]
        make_llama(tmp_path / "m", **cfg)
    else:
        cfg = FAMILY_CONFIGS[family][name]
        make_model(family, tmp_path / "m", seed=3, **cfg)
    gqa = load(tmp_path / "m", "cpu", max_seqs=3, max_tokens=64, kv_capacity=8,
               long_decode_from=NEVER)
    long = load(tmp_path / "m", "cpu", max_seqs=3, max_tokens=64, kv_capacity=8,
                long_decode_from=0)
    if type(long).__name__ != "OnnxExecutor":
        pytest.fail(f"{family}/{name} fell back from the cpu target")
    rng = np.random.default_rng(0)
    vocab = cfg["vocab_size"]
    lengths = [20, 23, 17]     # rows of capacity 32: the long graph reads <= 2x their keys
    seqs = [(rng.integers(0, vocab, n).tolist(), 0, [4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3])
            for i, n in enumerate(lengths)]
    for ex in (gqa, long):
        ex.forward(StepInputs.for_sequences(seqs, BS))
    cached = list(lengths)
    for step in range(6):
        new = rng.integers(0, vocab, 3).tolist()
        batch = [([t], c, seqs[i][2]) for i, (t, c) in enumerate(zip(new, cached))]
        want = gqa.forward(StepInputs.for_sequences(batch, BS)).numpy().copy()
        got = long.forward(StepInputs.for_sequences(batch, BS)).numpy()
        assert close(got, want), f"step {step}: {np.abs(got - want).max()}"
        cached = [c + 1 for c in cached]
    assert long.long_decode.runs == 6 and gqa.long_decode.runs == 0
    for name_, cache in gqa.caches.items():
        rows = long.rows.rows
        for i, n in enumerate(cached):
            r_gqa = next(r for r, row in enumerate(gqa.rows.rows) if row.length == n)
            r_long = next(r for r, row in enumerate(rows) if row.length == n)
            assert close(long.caches[name_][r_long, :, :n], cache[r_gqa, :, :n], 1e-5)


def test_decode_switches_graphs_by_length(tmp_path, cache_dir):
    """A sequence starts on model.onnx and moves to decode_long.onnx once its rows are
    long enough (the session opened in the background from half that length); prefill
    chunks always run on model.onnx."""
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ex = load(tmp_path / "m", "cpu", max_seqs=1, kv_capacity=8, long_decode_from=12)
    blocks = [0, 1, 2]
    ex.forward(StepInputs.for_sequences([(list(range(1, 10)), 0, blocks)], BS))
    cached, runs = 9, []
    for token in range(10, 20):
        ex.forward(StepInputs.for_sequences([([token], cached, blocks)], BS))
        cached += 1
        runs.append(ex.long_decode.runs)
        if cached == 10:     # past half the threshold: opening in the background, not used
            assert ex.long_decode.opening is not None and ex.long_decode.session is None
    # lengths 10, 11 on GQA; from 12 on the long graph
    assert runs == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    before = ex.long_decode.runs
    ex.forward(StepInputs.for_sequences([(list(range(20, 25)), cached, blocks)], BS))
    assert ex.long_decode.runs == before


def test_long_graph_is_not_opened_without_memory_for_it(tmp_path, cache_dir, monkeypatch, capsys):
    """Its session holds a second copy of the weights: with too little memory available
    the executor stays on GQA (and says so, once)."""
    from rustinfer.runtime import onnx_long_run

    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ex = load(tmp_path / "m", "cpu", max_seqs=1, kv_capacity=8, long_decode_from=0)
    monkeypatch.setattr(onnx_long_run, "available_memory", lambda: 1000)
    ex.forward(StepInputs.for_sequences([(list(range(1, 10)), 0, [0, 1])], BS))
    for i in range(3):
        ex.forward(StepInputs.for_sequences([([5], 9 + i, [0, 1])], BS))
    assert ex.long_decode.session is None and ex.long_decode.runs == 0
    assert capsys.readouterr().err.count("long-context decode graph not opened") == 1


@pytest.mark.parametrize("env,want", [("off", None), ("2048", 2048), ("", "the default")])
def test_long_decode_from_environment(monkeypatch, env, want):
    from rustinfer.runtime.onnx_long_run import LONG_DECODE_FROM, long_decode_start

    monkeypatch.setenv("RUSTINFER_LONG_DECODE_FROM", env)
    assert long_decode_start(None) == (LONG_DECODE_FROM if env == "" else want)
    assert long_decode_start(7) == 7
    for bad in ("lots", "-5"):
        monkeypatch.setenv("RUSTINFER_LONG_DECODE_FROM", bad)
        with pytest.raises(ValueError, match="RUSTINFER_LONG_DECODE_FROM"):
            long_decode_start(None)


def test_a_long_graph_that_fails_to_open_leaves_decoding_on_gqa(tmp_path, cache_dir, capsys):
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ex = load(tmp_path / "m", "cpu", max_seqs=1, kv_capacity=8, long_decode_from=0)
    ex.long_decode.meta = {**ex.long_decode.meta, "model": "missing.onnx"}      # as if deleted
    ex.forward(StepInputs.for_sequences([(list(range(1, 10)), 0, [0, 1])], BS))
    logits = ex.forward(StepInputs.for_sequences([([5], 9, [0, 1])], BS)).numpy()
    assert np.isfinite(logits).all() and ex.long_decode.session is None and ex.long_decode.runs == 0
    assert "did not open" in capsys.readouterr().err


def test_exit_while_the_long_graph_opens_waits_for_it(tmp_path, cache_dir):
    """A process that ends while decode_long.onnx is still opening in the background (a
    short answer to a prompt past half the threshold) waits for it and exits cleanly: a
    daemon thread inside ONNX Runtime at interpreter exit aborted it (status 134)."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    here = Path(__file__).parent
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(here)!r}]
        from test_onnx_cpu import BS, load
        from rustinfer.compiler.step_inputs import StepInputs
        ex = load({str(tmp_path / "m")!r}, "cpu", max_seqs=1, kv_capacity=8,
                  long_decode_from=16)
        real = ex.open_graph
        def slow_open(name):
            time.sleep(1.0)                     # still opening when the main thread ends
            session = real(name)
            print("long graph opened", flush=True)
            return session
        ex.open_graph = slow_open
        ex.forward(StepInputs.for_sequences([(list(range(1, 10)), 0, [0, 1])], BS))
        ex.forward(StepInputs.for_sequences([([5], 9, [0, 1])], BS))   # starts the opening
        assert ex.long_decode.opening is not None and ex.long_decode.session is None
        print("main done", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["main", "done", "long", "graph", "opened"]
