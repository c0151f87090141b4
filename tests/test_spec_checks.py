"""The checks behind the spec errors: the op table's attribute types, unused values
and weights, and that every shipped spec passes them at every test config."""
from __future__ import annotations

import warnings

import pytest

from family_models import FAMILY_CONFIGS
from hf_models import PARITY_CONFIGS
from rustinfer.compiler import fused_ops  # noqa: F401  (registers the fused ops)
from rustinfer.compiler.bind import bind
from rustinfer.compiler.errors import SpecError, SpecWarning, close_names
from rustinfer.compiler.ops import OPS, REQUIRED, AttrType
from rustinfer.compiler.pipeline import run_pipeline
from rustinfer.compiler.spec import SPECS_DIR, load_spec, parse_spec
from rustinfer.compiler.verify import VerifyError, verify

LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=100)


def test_every_attribute_of_every_op_has_a_type_its_default_fits():
    for name, op in OPS.items():
        assert set(op.types) == set(op.attrs), name
        for attr, default in op.attrs.items():
            if default is not REQUIRED:
                assert op.types[attr].accepts(default), (name, attr, default)


def test_attr_type_rules():
    integer, number = AttrType("int", min=1), AttrType("float", optional=True)
    assert integer.accepts(3) and not integer.accepts(True) and not integer.accepts(3.0)
    assert not integer.accepts(0) and not integer.accepts(None)
    assert number.accepts(3) and number.accepts(0.5) and number.accepts(None)
    assert not number.accepts(False) and not number.accepts("1e-6")
    assert AttrType("ints").accepts((1, 2)) and not AttrType("ints").accepts([1, True])
    choice = AttrType("str", choices=("none", "tanh"))
    assert choice.accepts("tanh") and not choice.accepts("erf")
    assert integer.problem(True) == "must be an int >= 1, got True (bool)"


def test_fused_ops_take_the_type_of_the_primitive_attribute():
    assert OPS["rope_kv_write"].types["heads"] == OPS["rope"].types["heads"]
    assert OPS["cached_attention"].types["window"] == OPS["attention"].types["window"]
    assert OPS["rms_norm"].types["heads"].optional          # omitted at its default
    assert not OPS["rope_kv_write"].types["heads"].optional


def _cases():
    cases = [(family, name, dict(cfg)) for family, configs in FAMILY_CONFIGS.items()
             for name, cfg in configs.items()]
    return cases + [("llama3", name, dict(cfg)) for name, cfg in PARITY_CONFIGS.items()]


@pytest.mark.parametrize("family,name,config", _cases(), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_shipped_specs_compute_nothing_unused_and_declare_nothing_unread(family, name, config):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecWarning)
        graph = bind(load_spec(SPECS_DIR / f"{family}.yaml"), config)
    verify(graph)


def test_verifier_rejects_an_attribute_of_the_wrong_type():
    graph = bind(load_spec("llama3"), LLAMA)
    node = next(n for n in graph.nodes if n.op == "attention")
    node.attrs["window"] = True
    with pytest.raises(VerifyError, match=r"attribute 'window' must be an int >= 0 or None, "
                                          r"got True \(bool\)"):
        verify(graph)


def test_allow_unused_binds_dead_values_for_tests_of_dead_code():
    text = (SPECS_DIR / "llama3.yaml").read_text().replace(
        "    - mlp.down:", "    - mlp.dbg: mul(mlp.gate, mlp.up)\n    - mlp.down:")
    spec = parse_spec(text, "specs/llama3.yaml")
    with pytest.raises(SpecError, match="value 'mlp.dbg' is computed but never used"):
        bind(spec, LLAMA)
    graph = bind(spec, LLAMA, allow_unused=True)
    _, report = run_pipeline(graph)
    assert not report.rewrites.get("fuse_gate_up_swiglu")   # why an unused value is an error


def test_close_names_are_a_typo_away():
    assert close_names("mlp.upp", ["mlp.up", "mlp.x"]) == ["mlp.up"]
    assert close_names("q_bais", ["q_bias", "k_bias"]) == ["q_bias"]      # a swap
    assert close_names("down_bias", ["o_bias", "o_proj"]) == []
    assert close_names("x", ["h"]) == []


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2", "qwen3", "phi3"])
def test_swiglu_specs_refuse_another_hidden_act_and_say_what_config_json_says(family):
    """These specs compute silu(gate) * up; a checkpoint whose hidden_act is another
    function used to bind and answer wrong tokens."""
    spec = load_spec(SPECS_DIR / f"{family}.yaml")
    bind(spec, dict(LLAMA, hidden_act="silu"))
    with pytest.raises(SpecError, match=r"hidden_act must be silu .*here act = 'gelu'"):
        bind(spec, dict(LLAMA, hidden_act="gelu"))


# A config.json that leaves a field out means the config class's default (transformers
# fills it in); one that writes null may mean something else (Gemma 2: no softcap).
_SHAPES = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=100)
_DEFAULTS = {  # spec symbol -> (transformers attribute, the value a null field means)
    "gemma2": {"attn_softcap": ("attn_logit_softcapping", 0.0),
               "final_softcap": ("final_logit_softcapping", 0.0),
               "sliding_window": ("sliding_window", 0),
               "query_scalar": ("query_pre_attn_scalar", None),
               "head_dim": ("head_dim", None), "eps": ("rms_norm_eps", None)},
    "mistral": {"window": ("sliding_window", 0), "eps": ("rms_norm_eps", None)},
    "qwen2": {"max_window_layers": ("max_window_layers", None), "eps": ("rms_norm_eps", None)},
    "qwen3": {"head_dim": ("head_dim", None), "max_window_layers": ("max_window_layers", None)},
    "phi3": {"eps": ("rms_norm_eps", None)},
    "llama3": {"eps": ("rms_norm_eps", None)},
}


@pytest.mark.parametrize("family", list(_DEFAULTS))
def test_absent_config_fields_take_the_config_class_defaults(family):
    from transformers import AutoConfig

    from rustinfer.compiler.bind import bind_symbols

    model_type = {"llama3": "llama"}.get(family, family)
    spec = load_spec(SPECS_DIR / f"{family}.yaml")
    env = bind_symbols(spec, dict(_SHAPES, model_type=model_type))
    hf = AutoConfig.for_model(model_type, **_SHAPES)
    for symbol, (attr, if_null) in _DEFAULTS[family].items():
        assert env[symbol] == getattr(hf, attr), (symbol, env[symbol], getattr(hf, attr))
        if if_null is not None:
            nulled = bind_symbols(spec, dict(_SHAPES, model_type=model_type, **{attr: None}))
            assert nulled[symbol] == if_null, symbol


def test_if_null_needs_a_field():
    text = (SPECS_DIR / "llama3.yaml").read_text()
    text = text.replace("config:\n", "config:\n  odd: {default: 1, if_null: 0}\n", 1)
    with pytest.raises(SpecError, match="'if_null' says what a null config.json field means"):
        parse_spec(text, "specs/llama3.yaml")
