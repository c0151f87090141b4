"""The cpu target (ONNX Runtime) against the reference interpreter, float32.

Executors are built through the target registry (not LLM), and greedy decoding
is a short loop over `forward`, so these tests pin the executor contract alone.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.bind import bind, select_spec
from rustinfer.compiler.spec import load_spec
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.runtime.checkpoint import open_checkpoint
from rustinfer.runtime.targets import LoadContext, build_executor

BS = 16


def load(folder, target, max_model_len=128, max_tokens=16, num_blocks=32, **options):
    ckpt = open_checkpoint(folder)
    spec = select_spec(ckpt.config)
    graph = bind(load_spec(spec), ckpt.config, ckpt)
    ctx = LoadContext(graph=graph, spec_path=str(spec), config=ckpt.config, checkpoint=ckpt,
                      num_blocks=num_blocks, block_size=BS, max_model_len=max_model_len,
                      max_step_tokens=max_tokens, options=options)
    return build_executor(target, ctx)


def ids(vocab, n, seed):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def score(ex, tokens, blocks):
    """logits [T, vocab] for every position, prefilled in chunks of ex.max_tokens."""
    rows = []
    for start in range(0, len(tokens), ex.max_tokens):
        chunk = tokens[start:start + ex.max_tokens]
        step = StepInputs.for_sequences([(chunk, start, blocks)], BS, logits="all")
        rows.append(ex.forward(step).numpy().copy())
    return np.concatenate(rows)


def greedy(ex, prompt, n, blocks):
    score(ex, prompt[:-1], blocks)
    cached, new, out = len(prompt) - 1, [prompt[-1]], []
    for _ in range(n):
        logits = ex.forward(StepInputs.for_sequences([(new, cached, blocks)], BS))
        cached += len(new)
        new = [int(logits[-1].argmax())]
        out.append(new[0])
    return out


def close(got, want, tol=1e-4):
    return np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()          # compiled models go to a private cache
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module", params=sorted(PARITY_CONFIGS))
def pair(request, tmp_path_factory, cache_dir):
    folder = tmp_path_factory.mktemp(request.param)
    make_llama(folder, seed=len(request.param), **PARITY_CONFIGS[request.param])
    return load(folder, "reference"), load(folder, "cpu", max_seqs=4), folder


def test_logits_match_reference(pair):
    ref, cpu, _ = pair
    tokens = ids(ref.graph.symbols["vocab"], 37, 1)     # > max_tokens: chunked prefill
    blocks = list(range(3))
    assert close(score(cpu, tokens, blocks), score(ref, tokens, blocks))


def test_greedy_matches_reference(pair):
    ref, cpu, _ = pair
    prompt = ids(ref.graph.symbols["vocab"], 6, 2)
    assert greedy(cpu, prompt, 16, [0, 1, 2]) == greedy(ref, prompt, 16, [0, 1, 2])


def test_batched_ragged_step(pair):
    """One step: a decode, a prefill chunk with history, a fresh prompt; then a decode batch."""
    ref, cpu, _ = pair
    vocab = ref.graph.symbols["vocab"]
    first = [(ids(vocab, 5, 3), 0, [0]), (ids(vocab, 8, 4), 0, [2, 1]), (ids(vocab, 3, 5), 0, [4])]
    second = [(ids(vocab, 1, 6), 5, [0]), (ids(vocab, 4, 7), 8, [2, 1]), (ids(vocab, 1, 8), 3, [4]),
              (ids(vocab, 2, 9), 0, [5])]
    third = [(ids(vocab, 1, 10), 12, [2, 1]), (ids(vocab, 1, 11), 6, [0]),
             (ids(vocab, 1, 12), 4, [4]), (ids(vocab, 1, 13), 2, [5])]
    for seqs in (first, second, third):
        want = ref.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        got = cpu.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        assert got.shape == want.shape
        assert close(got, want)


def test_rows_grow_and_keep_their_contents(tmp_path, cache_dir):
    """Rows start at 4 positions and double (4 -> 8 -> 16) while sequences of different
    lengths are mid-flight; every step still matches the reference."""
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ref, cpu = load(tmp_path / "m", "reference"), load(tmp_path / "m", "cpu", max_seqs=4,
                                                          kv_capacity=4)
    assert cpu.capacity == 4
    vocab = ref.graph.symbols["vocab"]
    steps = [[(ids(vocab, 3, 1), 0, [0]), (ids(vocab, 2, 2), 0, [1])],
             [(ids(vocab, 1, 3), 3, [0]), (ids(vocab, 1, 4), 2, [1])],          # 4 and 3 fit
             [(ids(vocab, 1, 5), 4, [0, 2]), (ids(vocab, 1, 6), 3, [1])],       # 5: grows to 8
             [(ids(vocab, 7, 7), 5, [0, 2, 3]), (ids(vocab, 1, 8), 4, [1])]]    # 12: to 16
    for seqs in steps:
        want = ref.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        got = cpu.forward(StepInputs.for_sequences(seqs, BS, logits="all")).numpy()
        assert close(got, want)
    assert cpu.capacity == 16
    assert cpu.caches["layers.0/attn/k_cache"].shape[2] == 16


def test_batch_equals_one_by_one(pair):
    ref, cpu, folder = pair
    vocab = ref.graph.symbols["vocab"]
    prompts = [ids(vocab, n, 20 + n) for n in (3, 7, 5)]
    alone = []
    for i, p in enumerate(prompts):
        alone.append(greedy(cpu, p, 6, [10 + i]))
    # all three together: prefill in one step, then batched decode steps
    seqs = [(p, 0, [10 + i]) for i, p in enumerate(prompts)]
    outs = [[] for _ in prompts]
    while len(outs[0]) < 6:
        logits = cpu.forward(StepInputs.for_sequences(seqs, BS))
        nxt = [int(row.argmax()) for row in logits]
        for o, t in zip(outs, nxt):
            o.append(t)
        seqs = [([t], c + len(new), b) for (new, c, b), t in zip(seqs, nxt)]
    assert outs == alone


@pytest.mark.parametrize("graph", ["model", "decode_long"])
def test_kv_in_place_and_no_output_allocation(tmp_path, cache_dir, graph):
    """Both decode graphs write the new k/v into the bound cache (GQA, or ScatterND whose
    copy ORT skips when its output is its input) and allocate no output of their own."""
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    cpu = load(tmp_path / "m", "cpu", max_seqs=2, kv_capacity=8,
               long_decode_from=0 if graph == "decode_long" else 10 ** 9)
    cpu.forward(StepInputs.for_sequences([([1, 2, 3, 4, 5], 0, [0]), ([7, 8], 0, [1])], BS))
    cpu.forward(StepInputs.for_sequences([([6], 5, [0]), ([9], 2, [1])], BS))
    session = cpu.long_decode.session if graph == "decode_long" else cpu.main
    assert session is not None and (cpu.long_decode.runs > 0) == (graph == "decode_long")
    ptrs = {n: c.ctypes.data for n, c in cpu.caches.items()}
    bound = dict(session.bound)
    before = cpu.caches["layers.0/attn/k_cache"][:, :, 6].copy()
    logits = cpu.forward(StepInputs.for_sequences([([10], 6, [0]), ([11], 3, [1])], BS))
    # same buffers, nothing rebound in a steady decode step
    assert {n: c.ctypes.data for n, c in cpu.caches.items()} == ptrs
    assert session.bound == bound
    # the cache was written in place (row 0 gained position 6) ...
    after = cpu.caches["layers.0/attn/k_cache"][:, :, 6]
    assert not np.array_equal(before[0], after[0]) and np.abs(after[0]).sum() > 0
    # ... and every output ORT produced lives in our persistent buffers
    outs = {o.data_ptr() for o in session.binding.get_outputs()}
    assert logits.data_ptr() == cpu.logits.ctypes.data
    assert outs <= {cpu.logits.ctypes.data} | set(ptrs.values())


def test_unsupported_op_falls_back_loudly(tmp_path, cache_dir, monkeypatch, capsys):
    from rustinfer.compiler import onnx_lowering

    monkeypatch.setattr(onnx_lowering, "_SUPPORTED", tuple(
        op for op in onnx_lowering._SUPPORTED if op != "swiglu"))
    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ex = load(tmp_path / "m", "cpu")
    assert "swiglu" in capsys.readouterr().err
    assert type(ex).__name__ == "PlanExecutor"


def test_compiled_model_is_cached(tmp_path, cache_dir):
    make_llama(tmp_path / "m", **PARITY_CONFIGS["mqa"])
    first, second = load(tmp_path / "m", "cpu"), load(tmp_path / "m", "cpu")
    assert not first.plan_cached and second.plan_cached and first.plan_dir == second.plan_dir
    names = {p.name for p in first.plan_dir.iterdir()}
    assert {"model.onnx", "weights.bin", "graph.txt", "report.txt", "meta.json"} <= names
    assert "/model/layers.0/attn/q+k+v/MatMul" in (first.plan_dir / "graph.txt").read_text()


@pytest.mark.slow
def test_smollm2_gguf_logits_match_reference(smollm2_gguf, cache_dir):
    ref = load(smollm2_gguf, "reference", max_model_len=256, max_tokens=64)
    cpu = load(smollm2_gguf, "cpu", max_model_len=256, max_tokens=64)
    tokens = ids(49152, 40, 7)
    blocks = list(range(math.ceil(48 / BS)))
    assert close(score(cpu, tokens, blocks), score(ref, tokens, blocks))
    assert greedy(cpu, tokens[:8], 8, blocks) == greedy(ref, tokens[:8], 8, blocks)


def test_unknown_attribute_is_unsupported(tmp_path):
    """An attribute the lowering does not know (one a future op version adds) is never
    dropped: the lowering refuses, and the target falls back."""
    from rustinfer.compiler.onnx_lowering import UnsupportedOp, lower
    from rustinfer.compiler.onnx_weights import WeightStore
    from rustinfer.compiler.pipeline import run_pipeline

    make_llama(tmp_path / "m", **PARITY_CONFIGS["gqa-tied"])
    ckpt = open_checkpoint(tmp_path / "m")
    fused, _ = run_pipeline(bind(load_spec(select_spec(ckpt.config)), ckpt.config, ckpt))
    next(n for n in fused.nodes if n.op == "rope_kv_write").attrs["mrope_sections"] = [2, 2]
    store = WeightStore(fused, ckpt, tmp_path)
    with pytest.raises(UnsupportedOp, match="mrope_sections"):
        lower(fused, store)
    store.close()
