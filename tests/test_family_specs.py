"""The family specs as IR: what they bind to, which fusions fire, and the spec
constructs they rely on (per-layer `let`, weight `rows`, absent optional
inputs, attributes present only when set), with their error messages."""
from __future__ import annotations

import textwrap

import pytest

from family_models import (FAMILY_CONFIGS, load_llm, make_model,  # noqa: F401
                           one_torch_thread)
from rustinfer.compiler.bind import bind, select_spec
from rustinfer.compiler.errors import SpecError
from rustinfer.compiler.expr import as_dtype
from rustinfer.compiler.pipeline import run_pipeline
from rustinfer.compiler.spec import SPECS_DIR, load_spec, parse_spec
from rustinfer.compiler.step_inputs import StepInputs

# Each family's architecture name, as its spec declares it (`matches.architectures`): a
# family added to FAMILY_CONFIGS needs nothing here.
ARCH = {family: load_spec(SPECS_DIR / f"{family}.yaml").architectures[0]
        for family in FAMILY_CONFIGS}


def _config(family: str, name: str) -> dict:
    return dict(FAMILY_CONFIGS[family][name], architectures=[ARCH[family]], model_type=family)


def _bound(family: str, name: str, **over):
    return bind(load_spec(SPECS_DIR / f"{family}.yaml"), {**_config(family, name), **over})


@pytest.mark.parametrize("family", sorted(ARCH))
def test_select_spec_by_architecture_or_model_type(family):
    assert select_spec({"architectures": [ARCH[family]]}).endswith(f"{family}.yaml")
    assert select_spec({"model_type": family}).endswith(f"{family}.yaml")


@pytest.mark.parametrize("family,name", [(f, c) for f in FAMILY_CONFIGS
                                         for c in FAMILY_CONFIGS[f]])
def test_every_fusion_fires_on_every_family(family, name):
    graph = _bound(family, name)
    layers = graph.symbols["n_layers"]
    _, report = run_pipeline(graph)
    got = report.rewrites
    assert got["fuse_qkv"] == got["fuse_gate_up_swiglu"] == got["fuse_rope_kv"] == layers
    # Every norm of a residual sum: all but the first layer's input norm.
    assert got["fuse_add_rms_norm"] == 2 * layers
    assert got["lm_head_last_token"] == 1


@pytest.mark.parametrize("family,name", [("gemma2", "tied-softcaps"), ("gemma2", "gelu-layer-types"),
                                         ("qwen3", "untied-bias"), ("qwen2", "sliding")])
def test_fused_graph_computes_what_the_spec_graph_computes(family, name):
    """verify.differential: the same random weights and a multi-sequence
    schedule through both graphs (GeGLU, softcaps, windows, per-head norms).
    Phi-3's packed slices are covered end to end by test_family_parity."""
    from rustinfer.compiler.verify import differential

    graph = _bound(family, name)
    fused, _ = run_pipeline(graph)
    differential(graph, fused, atol=1e-4)


def _windows(graph) -> list:
    return [n.attrs.get("window", 0) for n in graph.nodes if n.op == "attention"]


def test_per_layer_windows_follow_transformers():
    # Gemma 2 without layer_types: layers 0, 2, ... slide (transformers' default).
    assert _windows(_bound("gemma2", "tied-softcaps", num_hidden_layers=3)) == [5, 0, 5]
    assert _windows(_bound("gemma2", "gelu-layer-types")) == [0, 6]
    # Qwen2: layers from max_window_layers on, and only with use_sliding_window.
    assert _windows(_bound("qwen2", "sliding")) == [0, 6]
    assert _windows(_bound("qwen2", "sliding", use_sliding_window=False)) == [0, 0]
    # Mistral: every layer, unless sliding_window is null.
    assert _windows(_bound("mistral", "window")) == [6, 6]
    assert _windows(_bound("mistral", "no-window-tied")) == [0, 0]


def test_unused_features_leave_the_ir_as_it_was():
    """No window, no softcap, full rotary, one-group norms: the attributes are
    absent, so graphs, dumps and plans read exactly as before they existed."""
    graph = _bound("mistral", "no-window-tied")
    for node in graph.nodes:
        assert not {"window", "softcap", "rotary_dim", "heads"} & set(node.attrs) or \
            node.op in ("rope", "attention")
        if node.op in ("rope", "attention"):
            assert not {"window", "softcap", "rotary_dim"} & set(node.attrs)


def test_phi3_projections_are_row_slices_fused_back_into_the_packed_tensor():
    graph = _bound("phi3", "gqa")
    q = graph.values["model.layers.0.self_attn.qkv_proj.weight[0:48]"]
    assert q.derive == ("slice", ["model.layers.0.self_attn.qkv_proj.weight"], (0, 0, 48))
    fused, _ = run_pipeline(graph)
    derived = [v.derive for v in fused.weights() if v.derive]
    assert ("slice", ["model.layers.0.self_attn.qkv_proj.weight"], (0, 0, 96)) in derived
    assert ("slice", ["model.layers.0.mlp.gate_up_proj.weight"], (0, 0, 144)) in derived
    assert not any(d[0] == "concat" for d in derived)


def test_gemma_embedding_normalizer_is_rounded_to_the_checkpoint_dtype():
    assert as_dtype(3584 ** 0.5, "bfloat16") == 59.75
    graph = _bound("gemma2", "tied-softcaps", dtype="bfloat16", hidden_size=3584,
                   head_dim=16, num_attention_heads=4)
    (scale,) = [n for n in graph.nodes if n.op == "scale"]
    assert scale.attrs["factor"] == 59.75


@pytest.mark.parametrize("family,name", [("gemma2", "tied-softcaps"), ("qwen3", "tied"),
                                         ("phi3", "partial-rotary-tied")])
def test_decode_step_allocates_nothing(family, name, tmp_path, monkeypatch):
    """Windows, soft-caps, per-head norms, GeGLU and partial rotary keep the
    plan's decode step allocation-free (contexts longer than the window)."""
    from test_plan_no_alloc import new_storages_in_step

    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_model(family, tmp_path / "m", **FAMILY_CONFIGS[family][name])
    llm = load_llm(tmp_path / "m", "cpu-torch", max_model_len=64)
    ex, bs = llm.executor, llm.block_size
    ex.forward(StepInputs.for_sequences([(list(range(3, 12)), 0, [0]), ([7, 8], 0, [1])], bs))
    ex.forward(StepInputs.for_sequences([([6], 9, [0]), ([9], 2, [1])], bs))
    decode = StepInputs.for_sequences([([10], 10, [0]), ([11], 3, [1])], bs)
    assert new_storages_in_step(ex, decode) == []


# --- the constructs, and their errors --------------------------------------------

SPEC = """
family: t
config:
  d: {default: 8}
  nv: {default: 11}
  bias: {default: false}
inputs:
  tokens: {shape: [T], dtype: int64}
  positions: {shape: [T], dtype: int64}
weights:
  emb: {name: emb, shape: [nv, d]}
  w: {name: packed, rows: [0, d], shape: [d, d], packed: [2 * d, d]}
  b: {name: b, shape: [d], when: bias}
prologue:
  - h: embedding(tokens, emb)
layers:
  count: 2
  index: i
  let:
    half: i * 4
  body:
    - h: linear(h, w, b)
    - h: scale(h, factor=1.0 + half)
outputs: [h]
"""


class FakeCheckpoint:
    def __init__(self, shapes: dict):
        self.shapes = shapes

    def names(self):
        return list(self.shapes)

    def shape(self, name):
        return self.shapes[name]


def _bind(text=SPEC, config=None, checkpoint=None):
    return bind(parse_spec(textwrap.dedent(text), "t.yaml"), config or {}, checkpoint)


def test_let_symbols_are_per_layer_and_absent_optional_inputs_are_dropped():
    graph = _bind()
    assert [n.attrs["factor"] for n in graph.nodes if n.op == "scale"] == [1.0, 5.0]
    assert [len(n.inputs) for n in graph.nodes if n.op == "linear"] == [2, 2]
    graph = _bind(config={}, checkpoint=None, text=SPEC.replace("{default: false}",
                                                                "{default: true}"))
    assert [len(n.inputs) for n in graph.nodes if n.op == "linear"] == [3, 3]


def test_packed_weight_shape_is_checked_against_the_checkpoint():
    ok = FakeCheckpoint({"emb": (11, 8), "packed": (16, 8)})
    _bind(checkpoint=ok)
    with pytest.raises(SpecError, match=r"t.yaml:\d+: .*packed weight 'packed' has shape "
                                        r"\[12, 8\].*expected \[16, 8\]"):
        _bind(checkpoint=FakeCheckpoint({"emb": (11, 8), "packed": (12, 8)}))
    with pytest.raises(SpecError, match=r"rows \[0, 8\) hold 8 rows but the shape says 4"):
        _bind(SPEC.replace("shape: [d, d], packed", "shape: [4, d], packed"))


def test_a_required_input_naming_an_absent_weight_is_an_error():
    text = SPEC.replace("linear(h, w, b)", "linear(h, b)").replace("{name: b, shape: [d]",
                                                                   "{name: b, shape: [d, d]")
    with pytest.raises(SpecError, match="needs 'b', a weight that is absent here"):
        _bind(text)


def test_let_and_attribute_errors_point_at_their_lines():
    with pytest.raises(SpecError, match=r"t.yaml:20: field 'layers.let.half': undefined "
                                        r"symbol 'ii'; did you mean 'i'"):
        _bind(SPEC.replace("half: i * 4", "half: ii * 4"))
    text = SPEC.replace("    - h: linear(h, w, b)", "    - h: softcap(h, cap=None)")
    with pytest.raises(SpecError, match=r"t.yaml:22: .*cap must be a number"):
        _bind(text)
