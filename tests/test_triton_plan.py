"""The generated plan on Triton kernels (interpreter, fp32) == the same plan on torch kernels.

Also runs the cuda target's executor on CPU with graphs off: its decode path
(static inputs, padding to a batch bucket, the dummy KV slot) must give what the
eager path gives. Graph capture itself needs a GPU (tests/test_cuda_*.py).
"""
from __future__ import annotations

import inspect

import pytest
import torch

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler.build import CompileOptions, compile_model
from rustinfer.compiler.spec import SPECS_DIR
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.kernels import torch_ops, triton_ops
from rustinfer.runtime.checkpoint import open_checkpoint
from rustinfer.runtime.cuda_executor import CudaExecutor, batch_buckets
from rustinfer.runtime.plan_executor import PlanExecutor


def test_op_signatures_match_torch_ops():
    """Every op torch_ops offers, triton_ops offers with the same parameters (extra ones
    only with defaults), so one plan runs on either module."""
    ops = [n for n, f in vars(torch_ops).items() if inspect.isfunction(f)
           and not n.startswith("_") and f.__module__ == torch_ops.__name__]
    missing = [n for n in ops if not hasattr(triton_ops, n)]
    assert not missing, f"triton_ops lacks {missing}"
    for name in ops:
        want = inspect.signature(getattr(torch_ops, name)).parameters
        got = inspect.signature(getattr(triton_ops, name)).parameters
        for p in want.values():
            assert p.name in got, f"{name}: no parameter {p.name}"
            assert (got[p.name].kind, got[p.name].default) == (p.kind, p.default), (name, p.name)
        extra = [p for p in got.values() if p.name not in want]
        assert all(p.default is not inspect.Parameter.empty for p in extra), (name, extra)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert batch_buckets(48) == [1, 2, 4, 8, 16, 32, 48]


BLOCK = 4     # small blocks: sequences span several, in scrambled order


@pytest.fixture(scope="module")
def executors(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = tmp_path_factory.mktemp("gqa")
    cfg = dict(PARITY_CONFIGS["llama3-rope-scaling"], num_hidden_layers=2)
    make_llama(folder, seed=3, **cfg)
    ckpt = open_checkpoint(folder)
    plan_dir, _ = compile_model(SPECS_DIR / "llama3.yaml", ckpt.config, ckpt,
                                CompileOptions(target="cuda", max_tokens=16, max_seqs=8))
    torch_ex = PlanExecutor(plan_dir / "plan.py", ckpt, num_blocks=12, block_size=BLOCK,
                            max_model_len=48)
    triton_ex = CudaExecutor(plan_dir / "plan.py", ckpt, num_blocks=12, block_size=BLOCK,
                             max_model_len=48, max_batch=4, device="cpu", dtype=torch.float32)
    yield torch_ex, triton_ex
    mp.undo()


def _ids(n, seed):
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _both(executors, seqs, logits="last"):
    torch_ex, triton_ex = executors
    want = torch_ex.forward(StepInputs.for_sequences(seqs, BLOCK, logits=logits))
    got = triton_ex.forward(StepInputs.for_sequences(seqs, BLOCK, logits=logits))
    assert got.shape == want.shape
    err = (got - want).abs().max().item()
    assert err <= 1e-4 * want.abs().max().item(), err
    return got


def test_plan_on_triton_ops_matches_torch_ops(executors):
    tables = {"a": [3, 0], "b": [5, 1, 7, 6], "c": [2]}
    # step 1: ragged prefill of three prompts (one spans three blocks), all rows' logits
    _both(executors, [(_ids(5, 1), 0, tables["a"]), (_ids(9, 2), 0, tables["b"]),
                      (_ids(2, 3), 0, tables["c"])], logits="all")
    # step 2: decode for all three: the bucket path (3 rows padded to 4)
    _, triton_ex = executors
    step = StepInputs.for_sequences([(_ids(1, 4), 5, tables["a"]), (_ids(1, 5), 9, tables["b"]),
                                     (_ids(1, 6), 2, tables["c"])], BLOCK)
    assert triton_ex.bucket_for(step) == 4
    _both(executors, [(_ids(1, 4), 5, tables["a"]), (_ids(1, 5), 9, tables["b"]),
                      (_ids(1, 6), 2, tables["c"])])
    # step 3: chunked prefill after a cached prefix, mixed with a decode (the eager path)
    _both(executors, [(_ids(1, 7), 6, tables["a"]), (_ids(2, 8), 10, tables["b"])])
    # step 4: two decodes (bucket 2), one crossing into a new block
    _both(executors, [(_ids(1, 9), 7, tables["a"]), (_ids(1, 10), 12, tables["b"])])


def test_bucket_path_equals_eager_path_and_spares_real_blocks(executors):
    _, ex = executors
    tables = [[9, 4], [10, 11]]
    ex.forward(StepInputs.for_sequences([(_ids(3, 11), 0, tables[0]),
                                         (_ids(6, 12), 0, tables[1])], BLOCK))
    before = {n: c[:-1].clone() for n, c in ex.caches.items()}
    step = StepInputs.for_sequences([(_ids(1, 13), 3, tables[0])], BLOCK)
    assert ex.bucket_for(step) == 1
    bucketed = ex.forward(step)
    after = {n: c[:-1] for n, c in ex.caches.items()}
    changed = {n: (after[n] != before[n]).any(dim=(2, 3)).nonzero().tolist() for n in after}
    assert all(v == [[9, 3]] for v in changed.values()), changed    # only the new token's slot
    eager = ex._eager(StepInputs.for_sequences([(_ids(1, 13), 3, tables[0])], BLOCK)).float()
    assert torch.allclose(bucketed, eager, atol=1e-5, rtol=1e-5)
    # a two-row decode lands in bucket 2 with no padding; three rows pad to 4 and the
    # padded row writes only the dummy block
    step = StepInputs.for_sequences([(_ids(1, 14), 4, tables[0]), (_ids(1, 15), 6, tables[1]),
                                     (_ids(1, 16), 3, [8])], BLOCK)
    for c in ex.caches.values():
        c[-1].zero_()
    before = {n: c[:-1].clone() for n, c in ex.caches.items()}
    ex.forward(step)
    assert all(c[-1].abs().sum() > 0 for c in ex.caches.values())      # the padded row
    changed = {n: (ex.caches[n][:-1] != before[n]).any(dim=(2, 3)).nonzero().tolist()
               for n in before}
    assert all(v == [[4, 0], [8, 3], [11, 2]] for v in changed.values()), changed


def test_single_row_steps_on_the_fused_gemv(executors, monkeypatch):
    """A bs=1 decode step routes every GEMM of the cuda plan to the Triton GEMV (the norm,
    residual add, SwiGLU, RoPE and KV append inside it) as on a GPU: routing CPU tensors
    there too runs that path in the interpreter, and it must match the plan on torch
    kernels."""
    from rustinfer.kernels.triton import gemv

    launched = []

    def spy(fn, tag):
        def call(*a, **kw):
            launched.append([tag] + sorted(k for k, v in kw.items()
                                           if v is not None and v is not False))
            return fn(*a, **kw)
        return call

    monkeypatch.setattr(triton_ops, "TRITON_GEMV", True)
    monkeypatch.setattr(triton_ops, "GEMV_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(gemv, "gemv", spy(gemv.gemv, "gemv"))
    monkeypatch.setattr(gemv, "gemv_rope_kv", spy(gemv.gemv_rope_kv, "rope"))
    table = [1, 2]
    _both(executors, [(_ids(6, 21), 0, table)])      # prefill: 6 rows on cuBLAS, but the
    norm = ["eps", "norm_weight", "offset"]          # LM head's one row on the GEMV
    assert launched == [["gemv"] + norm]
    launched.clear()
    _both(executors, [(_ids(1, 22), 6, table)])      # decode: one row, all on the GEMV
    layers = 2
    rope = ["rope", "eps", "head_dim", "heads", "kv_heads", "norm_weight", "offset"]
    assert launched.count(rope) == layers                                   # qkv
    assert launched.count(["gemv", "residual"]) == 2 * layers               # o, down
    assert launched.count(["gemv"] + norm + ["swiglu"]) == layers           # gate_up
    assert launched.count(["gemv"] + norm) == 1                             # LM head
    assert len(launched) == 4 * layers + 1


def test_batched_decode_on_the_tensor_core_gemv(executors, monkeypatch):
    """RUSTINFER_TRITON_GEMV_ROWS: a batched decode step's GEMMs on the GEMV's tensor-core
    (tl.dot) path, norm / RoPE / KV append / SwiGLU / residual fused for every row, padded
    bucket rows included, must compute what the plan on torch kernels computes."""
    from rustinfer.kernels.triton import gemv, gemv_config

    dot_rows = []

    def spy(fn):
        def call(x, *a, **kw):
            dot_rows.append(gemv.gemv_config(8, 8, x.shape[0]).dot)
            return fn(x, *a, **kw)
        return call

    monkeypatch.setattr(triton_ops, "TRITON_GEMV", True)
    monkeypatch.setattr(triton_ops, "GEMV_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(triton_ops, "GEMV_MAX_ROWS", 4)
    monkeypatch.setattr(gemv_config, "FMA_ROWS", 1)   # 3 rows (bucket 4) take tl.dot here
    monkeypatch.setattr(gemv, "gemv", spy(gemv.gemv))
    monkeypatch.setattr(gemv, "gemv_rope_kv", spy(gemv.gemv_rope_kv))
    tables = [[3, 0], [5, 6], [7, 8]]
    for i, t in enumerate(tables):
        _both(executors, [(_ids(5 + i, 40 + i), 0, t)])
    dot_rows.clear()
    _both(executors, [(_ids(1, 50 + i), 5 + i, t) for i, t in enumerate(tables)])
    assert dot_rows and all(dot_rows), dot_rows


def test_fused_ops_off_the_gemv_say_what_is_wrong():
    """More rows than the GEMV takes: the fused ops run in parts through the workspace's
    scratch, which the plan sizes; a too-small one, a wrong act or residual is a clear error."""
    ws = triton_ops.Workspace(max_tokens=4, max_context=16, max_heads=2, max_kv_width=8,
                              max_head_dim=4, block_size=4, scratch_width=3,
                              act_dtype=torch.float32)
    x, w, nw = torch.randn(4, 8), torch.randn(6, 8), torch.ones(8)
    with pytest.raises(ValueError, match="LIMITS\\['scratch_width'\\]"):
        triton_ops.rms_norm_linear(x, nw, w, out=torch.empty(4, 6), eps=1e-5, ws=ws)
    with pytest.raises(ValueError, match="act must be None or 'swiglu'"):
        triton_ops.rms_norm_linear(x, nw, w, out=torch.empty(4, 3), eps=1e-5, act="gelu",
                                   ws=ws)
    with pytest.raises(ValueError, match="residual"):
        triton_ops.linear_add(x, w, torch.randn(6), out=torch.empty(4, 6))


def test_cuda_plan_on_torch_kernels_matches_the_cpu_torch_plan(tmp_path, monkeypatch):
    """The cuda plan (fused norms / residual adds / SwiGLU / RoPE, the residual stream
    updated in place by linear_add) computes what the unfused cpu-torch plan computes:
    prefill over three blocks, a decode, a chunk after a cached prefix."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "m", seed=5, **dict(PARITY_CONFIGS["llama3-rope-scaling"],
                                              num_hidden_layers=3))
    ckpt = open_checkpoint(tmp_path / "m")
    runs = []
    for target in ("cpu-torch", "cuda"):
        plan_dir, _ = compile_model(SPECS_DIR / "llama3.yaml", ckpt.config, ckpt,
                                    CompileOptions(target=target, max_tokens=16, max_seqs=8))
        ex = PlanExecutor(plan_dir / "plan.py", ckpt, num_blocks=12, block_size=BLOCK,
                          max_model_len=48)
        table = [3, 0, 5, 6]
        runs.append([ex.forward(StepInputs.for_sequences(seqs, BLOCK, logits=logits))
                     for seqs, logits in (([(_ids(9, 31), 0, table)], "all"),
                                          ([(_ids(1, 32), 9, table)], "last"),
                                          ([(_ids(3, 33), 10, table)], "all"))])
    assert "written in place" in (plan_dir / "memory.txt").read_text()
    for want, got in zip(*runs):
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


@pytest.mark.parametrize("ops", [torch_ops, triton_ops], ids=["torch_ops", "triton_ops"])
def test_linear_add_in_place_and_apart(ops):
    """out = residual + x @ W^T whether the plan gives out the residual's bytes (the
    residual stream updated in place) or bytes of its own."""
    x, w, res = torch.randn(5, 8), torch.randn(6, 8), torch.randn(5, 6)
    want = res + x @ w.t()
    apart = torch.empty(5, 6)
    ops.linear_add(x, w, res.clone(), out=apart)
    arena = res.clone().reshape(-1)
    residual, out = arena.view(5, 6), arena[:30].view(5, 6)     # two views, same bytes
    ops.linear_add(x, w, residual, out=out)
    for got in (apart, out):
        assert torch.allclose(got, want, atol=1e-5)
