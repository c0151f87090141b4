"""The generated plans for a tiny Llama config, checked in: a codegen change shows up as a diff.

One per target family of plans: cpu-torch (the unfused layer) and cuda (after
fuse_norm_linear: the norms, residual adds and SwiGLU inside the GEMMs).
Regenerate after an intended change with
    RUSTINFER_UPDATE_GOLDEN=1 ./test.sh tests/test_golden_plan.py
and review the diff of tests/golden/llama3_tiny_*plan.py like any code change.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from rustinfer.compiler.build import CompileOptions, compile_model
from rustinfer.compiler.spec import SPECS_DIR

GOLDEN = {"cpu-torch": Path(__file__).parent / "golden" / "llama3_tiny_plan.py",
          "cuda": Path(__file__).parent / "golden" / "llama3_tiny_cuda_plan.py"}
TINY = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=64,
            intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, rms_norm_eps=1e-5,
            tie_word_embeddings=True, rope_theta=10000.0, max_position_embeddings=256)


@pytest.mark.parametrize("target", sorted(GOLDEN))
def test_generated_plan_matches_golden(tmp_path, monkeypatch, target):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    folder, _ = compile_model(SPECS_DIR / "llama3.yaml", TINY, None,
                              CompileOptions(target=target, max_tokens=32, max_seqs=8))
    text = (folder / "plan.py").read_text()
    if os.environ.get("RUSTINFER_UPDATE_GOLDEN"):
        GOLDEN[target].write_text(text)
    assert text == GOLDEN[target].read_text(), \
        f"{target} plan.py changed: review, then regenerate the golden"


# --- what a reader of plan.py needs besides the code ----------------------------------

def _compile(tmp_path, monkeypatch, spec: str, config: dict, target: str = "cpu-torch"):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    folder, _ = compile_model(SPECS_DIR / spec, config, None,
                              CompileOptions(target=target, max_tokens=32, max_seqs=8))
    return folder


def _steps(plan: str) -> list[tuple[int, list[str], str]]:
    """(step, value names, spec locations) of each `# [n] names: op ...  (file:lines)`."""
    steps = []
    for m in re.finditer(r"^    # \[(\d+)\] (.+?): \S+ .*?(?:\s+\((\S+)\))?$", plan, re.M):
        steps.append((int(m.group(1)), m.group(2).split(", "), m.group(3) or ""))
    return steps


def test_sections_are_prologue_layers_epilogue(tmp_path, monkeypatch):
    """Gemma 2's prologue has two nodes (embedding, then the sqrt(hidden) scale): both are
    prologue, and the one epilogue comes after the last layer (the second prologue node
    used to open an `epilogue` section before layer 0)."""
    from transformers import AutoConfig

    from family_models import FAMILY_CONFIGS
    config = AutoConfig.for_model("gemma2", **FAMILY_CONFIGS["gemma2"]["tied-softcaps"]).to_dict()
    config["architectures"] = ["Gemma2ForCausalLM"]
    plan = (_compile(tmp_path, monkeypatch, "gemma2.yaml", config) / "plan.py").read_text()
    sections = re.findall(r"^    # ---- (\S+) -+$", plan, re.M)
    assert sections == ["prologue", "layers.0", "layers.1", "epilogue"]
    prologue = plan.split("# ---- prologue")[1].split("# ---- layers.0")[0]
    assert "K.embedding(" in prologue and "K.scale(" in prologue
    assert "K.softcap(" in plan.split("# ---- epilogue")[1]


def test_section_of():
    from rustinfer.compiler.codegen import section_of
    current, seen = None, []
    for name in ["h/emb", "h", "layers.0/attn/x", "layers.1/h", "final/x", "logits"]:
        current = section_of(name, current)
        seen.append(current)
    assert seen == ["prologue", "prologue", "layers.0", "layers.1", "epilogue", "epilogue"]


@pytest.mark.parametrize("target", sorted(GOLDEN))
def test_step_numbers_and_offsets_match_the_memory_plan(tmp_path, monkeypatch, target):
    """plan.py's `# [n]` steps are the memory plan's step numbers (a value's live range
    starts at the step that writes it), and the slot table's offsets are the element
    offsets plan.py slices its arena at."""
    from rustinfer.compiler.codegen import py_name
    folder = _compile(tmp_path, monkeypatch, "llama3.yaml", TINY, target)
    plan, table = (folder / "plan.py").read_text(), (folder / "memory.txt").read_text()
    memory = json.loads((folder / "memory.json").read_text())
    values, act_bytes = memory["values"], memory["act_bytes"]
    steps = _steps(plan)
    assert [n for n, _, _ in steps] == list(range(len(steps)))
    checked = 0
    for step, names, _ in steps:
        for name in names:
            if name in values:
                assert values[name]["start"] == step, name
                checked += 1
    assert checked >= len(steps) - 2          # all but a split's name and the pinned logits
    for name, slot in values.items():
        if "view_of" in slot:
            continue
        element = slot["offset"] // act_bytes
        assert f"{py_name(name)} = arena[{element}:{element} + " in plan, name
        row = next(line for line in table.splitlines() if line.endswith(f"  {name}")
                   and line.split()[0].isdigit())
        assert row.split()[:2] == [str(element), str(slot["size"])], row
    assert "in arena elements of ACT_BYTES = 4 bytes" in table
    assert f"MAX_TOKENS = {memory['max_tokens']} tokens" in table


def test_steps_cite_their_spec_lines(tmp_path, monkeypatch):
    """Each step names the spec line(s) it came from; a fused node keeps the lines of
    every node it replaced (q, k, v -> one GEMM cites all three)."""
    spec_lines = (SPECS_DIR / "llama3.yaml").read_text().splitlines()

    def line_of(text: str) -> int:
        return next(i for i, line in enumerate(spec_lines, 1) if line.lstrip().startswith(text))

    plan = (_compile(tmp_path, monkeypatch, "llama3.yaml", TINY) / "plan.py").read_text()
    where = {names[0]: locs for _, names, locs in _steps(plan)}
    q, k, v = (line_of(f"- attn.{x}:") for x in "qkv")
    assert where["layers.0/attn/q+k+v"] == f"llama3.yaml:{q}-{v}" and (q, k) == (v - 2, v - 1)
    assert where["layers.0/attn/x"] == f"llama3.yaml:{line_of('- attn.x:')}"
    assert where["h"] == f"llama3.yaml:{line_of('- h: embedding')}"
    rope_q, rope_k, attn = (line_of(t) for t in ("- attn.q_rot:", "- attn.k_rot:",
                                                  "- attn.out:"))
    assert where["layers.0/attn/q_rot"] == f"llama3.yaml:{rope_q},{rope_k},{attn}"
    assert all(locs.startswith("llama3.yaml:") for locs in where.values())


def test_fused_nodes_keep_the_spec_locations_they_replaced():
    from rustinfer.compiler.bind import bind
    from rustinfer.compiler.pipeline import run_pipeline
    from rustinfer.compiler.spec import load_spec

    graph = bind(load_spec(SPECS_DIR / "llama3.yaml"), TINY, None)
    lines = {n.name: n.loc.line for n in graph.nodes}
    fused, _ = run_pipeline(graph)
    node = next(n for n in fused.nodes if n.name == "layers.0/attn/q+k+v")
    assert [loc.line for loc in node.spec_locs()] == [lines[f"layers.0/attn/{x}"] for x in "qkv"]
    assert node.loc in node.spec_locs()                       # errors still name one line
    unfused = next(n for n in fused.nodes if n.name == "layers.0/attn/x")
    assert unfused.fused_locs == () and unfused.spec_locs() == (unfused.loc,)


def test_fused_ops_say_what_they_absorbed(tmp_path, monkeypatch):
    """The first call of each fused op says what it computes in the spec's terms (once,
    not on every layer); add_rms_norm names its second output; scale=None and the fused
    weights' names are explained."""
    plan = (_compile(tmp_path, monkeypatch, "llama3.yaml", TINY) / "plan.py").read_text()
    lines = plan.splitlines()

    def described(header: str) -> str:
        i = next(i for i, line in enumerate(lines) if line.startswith(f"    # {header}"))
        return lines[i + 1]

    assert "also rope(k), then writes k and v into this layer's KV cache" in \
        described("[4] layers.0/attn/q_rot: rope_kv_write")
    assert "silu(gate) * up" in described("[9] layers.0/mlp/prod: swiglu")
    assert "l0_h = h + l0_attn_o (the residual sum); l0_mlp_x = rms_norm(l0_h)" in \
        described("[7] layers.0/mlp/x, layers.0/h: add_rms_norm")
    assert "q_proj, k_proj, v_proj" in described("[2] layers.0/attn/q+k+v: linear")
    assert plan.count("rope(q); also rope(k)") == 1           # layer 1 is not re-described
    assert ", scale=None" not in plan and plan.count(", scale=INV_SQRT_HEAD_DIM,") == 2
    assert re.search(r"^INV_SQRT_HEAD_DIM = None +# .*1 / sqrt\(head_dim\)", plan, re.M)
    weights = plan.split("WEIGHTS = {")[1].split("}")[0]
    assert "not checkpoint names" in weights and "(q+k+v_proj: q_proj, k_proj, v_proj)" in weights
    assert weights.index("not checkpoint names") < weights.index('"model.layers.0.self_attn.q+k+v')
