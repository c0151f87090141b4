"""The cuda target end to end on a GPU: graph replay == eager, and both == the fp32 plan.

    TRITON_INTERPRET=0 pytest -m cuda        (bench/gpu_check.sh does this)
"""
from __future__ import annotations

import pytest
import torch

from hf_models import make_llama
from rustinfer.compiler.build import CompileOptions, compile_model
from rustinfer.compiler.spec import SPECS_DIR
from rustinfer.compiler.step_inputs import StepInputs
from rustinfer.kernels.triton import INTERPRET
from rustinfer.runtime.checkpoint import open_checkpoint

pytestmark = pytest.mark.cuda
CONFIG = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
              num_attention_heads=8, num_key_value_heads=2, vocab_size=1000,
              tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    assert not INTERPRET, "run the cuda tests with TRITON_INTERPRET=0"
    from rustinfer.runtime.cuda_executor import CudaExecutor
    from rustinfer.runtime.plan_executor import PlanExecutor

    mp = pytest.MonkeyPatch()
    mp.setenv("RUSTINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = tmp_path_factory.mktemp("model")
    make_llama(folder, seed=1, **CONFIG)
    ckpt = open_checkpoint(folder)
    plan_dir, _ = compile_model(SPECS_DIR / "llama3.yaml", ckpt.config, ckpt,
                                CompileOptions(target="cuda", max_tokens=256))
    gpu = CudaExecutor(plan_dir / "plan.py", ckpt, num_blocks=64, block_size=16,
                       max_model_len=512, max_batch=8)
    ref = PlanExecutor(plan_dir / "plan.py", ckpt, num_blocks=64, block_size=16,
                       max_model_len=512)
    yield gpu, ref, folder
    mp.undo()


def _ids(n, seed):
    return torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _close(got, want, rel=3e-2):
    err = (got.float() - want.float()).abs().max().item()
    assert err <= rel * want.abs().max().item(), err


def test_graph_replay_matches_eager_and_fp32(model):
    gpu, ref, _ = model
    assert sorted(gpu.graphs) == [1, 2, 4, 8]
    tables = [[i * 4 + j for j in range(4)] for i in range(8)]
    lens = [37, 5, 60, 1, 16, 17, 33, 2]
    prompts = [(_ids(n, i), 0, tables[i]) for i, n in enumerate(lens)]
    for ex in (gpu, ref):
        ex.forward(StepInputs.for_sequences(prompts[:5], 16))     # eager, ragged prefill
        ex.forward(StepInputs.for_sequences(prompts[5:], 16))
    for step_no, batch in enumerate([1, 3, 5, 8, 8, 2]):          # pads 3->4, 5->8
        seqs = [(_ids(1, 100 + 10 * step_no + i), lens[i], tables[i]) for i in range(batch)]
        step = StepInputs.for_sequences(seqs, 16)
        assert gpu.bucket_for(step) is not None
        replayed = gpu.forward(step)
        eager = gpu._eager(StepInputs.for_sequences(seqs, 16)).float().cpu()
        want = ref.forward(StepInputs.for_sequences(seqs, 16))
        _close(replayed, eager, rel=1e-2)
        # bf16 weights, activations and KV cache vs the fp32 plan: the max error grows with
        # steps (3.4% -> 6.4% of the logit scale on this random model, H200, 2026-11-26), so
        # compare direction: a wrong slot or block would drop a row's cosine far below this.
        cos = torch.nn.functional.cosine_similarity(replayed.float(), want.float(), dim=-1)
        assert cos.min().item() >= 0.995, cos
        for i in range(batch):
            lens[i] += 1


def test_llm_generates_on_the_cuda_target(model, monkeypatch, tmp_path):
    from rustinfer.runtime import LLM, SamplingParams

    *_, folder = model
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    llm = LLM(model=str(folder), target="cuda", max_model_len=256, max_num_batched_tokens=64,
              max_batch=4)
    out = llm.generate([_ids(20, 1), _ids(3, 2)], SamplingParams(max_tokens=12, temperature=0.0))
    assert [len(o.token_ids) for o in out] == [12, 12]


def test_overlapped_decoding_on_the_gpu_gives_the_tokens_of_plain_steps(model, monkeypatch,
                                                                          tmp_path):
    """The engine launches each decode step from the last one's tokens still on the GPU
    (token ids copied device to device into the graph's inputs), then reads them back
    through pinned memory: the same tokens as steps that wait, greedy and seeded."""
    from rustinfer.runtime import LLM, SamplingParams

    *_, folder = model
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    llm = LLM(model=str(folder), target="cuda", max_model_len=256, max_num_batched_tokens=64,
              max_batch=4)
    prompts = [_ids(20, 1), _ids(3, 2), _ids(37, 3)]
    for params in (SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
                   SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=3)):
        runs = []
        for overlap in (False, True):
            llm.engine.overlap_decode, llm.engine.num_overlapped_steps = overlap, 0
            runs.append([o.token_ids for o in llm.generate(prompts, params)])
            assert (llm.engine.num_overlapped_steps > 0) == overlap
        assert runs[0] == runs[1]
    assert llm.engine.blocks.num_used == 0
