"""Every kernel specialization the cuda target emits compiles to an sm_90 cubin (no GPU needed).

The plan for SmolLM2-135M and Llama-3.2-1B shapes runs on meta tensors with
launches recorded (decode buckets 1..32 and two prefill layouts), and each
distinct specialization goes through triton.compile for GPUTarget("cuda", 90).
The plans route as on a GPU: 1-row GEMMs, and the fused norm/residual/SwiGLU
GEMMs of a bs=1 step, go to the Triton GEMV.
It runs in a subprocess: the compiler cannot lower Triton's library functions
once TRITON_INTERPRET=1 has turned them into interpreted ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

# SmolLM2-135M(-Instruct)'s architecture values (its config.json).
SMOLLM2 = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576,
               intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5,
               rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192)


def test_every_emitted_kernel_compiles_for_sm90(tmp_path, llama32_1b_dir):
    smol = tmp_path / "smollm2.json"
    smol.write_text(json.dumps(SMOLLM2))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["RUSTINFER_CACHE"] = str(tmp_path / "cache")
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    out = subprocess.run([sys.executable, "-m", "rustinfer.kernels.triton.aot", str(smol),
                          str(llama32_1b_dir / "config.json"), "--buckets", "1,2,4,8,16,32",
                          "--prefill", "128"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    kernels = {line.split("]")[0].split()[-1].split("[")[0] for line in lines
               if line.startswith("ok ")}
    assert kernels == {"gather._gather_kernel", "rms_norm._rms_norm_kernel",
                       "rope_kv._rope_kv_kernel", "swiglu._swiglu_kernel",
                       "decode_attention._decode_attention_kernel",
                       "decode_attention._merge_kernel", "prefill_attention._prefill_attention_kernel",
                       "gemv._gemv_kernel"}, lines
    assert lines[-1].startswith("aot: ") and int(lines[-1].split()[1]) >= 14
    # Llama-3.2-1B's bs=1 step: qkv with its norm, o and down with the residual, gate+up
    # with its norm and SwiGLU, the LM head with the final norm: all one-row GEMVs.
    after_smol = lines[next(i for i, line in enumerate(lines) if "smollm2.json:" in line):]
    gemvs = [line for line in after_smol if line.startswith("ok ") and "gemv._gemv_kernel" in line]
    assert 4 <= len(gemvs) <= 6, gemvs
    assert all("BLOCK_M=1," in line for line in gemvs), gemvs
    assert any("HAS_NORM=True" in line and "SWIGLU=True" in line for line in gemvs), gemvs
    assert any("HAS_RESIDUAL=True" in line for line in gemvs), gemvs
