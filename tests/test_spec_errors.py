"""Every class of spec / config / checkpoint error names file, line and field, and suggests."""
from __future__ import annotations

from pathlib import Path

import pytest

from rustinfer.compiler.bind import bind
from rustinfer.compiler.errors import SpecError
from rustinfer.compiler.spec import parse_spec

SPEC_FILE = Path(__file__).resolve().parent.parent / "specs" / "llama3.yaml"
SPEC_TEXT = SPEC_FILE.read_text()
CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=100, rms_norm_eps=1e-5)


def _edit(old: str, new: str) -> tuple[str, int]:
    """The spec with one edit, and the 1-based line the edit is on."""
    assert SPEC_TEXT.count(old) == 1, old
    line = SPEC_TEXT[:SPEC_TEXT.index(old)].count("\n") + 1
    return SPEC_TEXT.replace(old, new), line


def _error(text: str, config=CONFIG, checkpoint=None) -> SpecError:
    with pytest.raises(SpecError) as info:
        bind(parse_spec(text, "specs/llama3.yaml"), config, checkpoint)
    return info.value


def test_unknown_op_names_line_and_suggests():
    text, line = _edit("mlp.act:  silu(mlp.gate)", "mlp.act:  sillu(mlp.gate)")
    err = _error(text)
    assert (err.file, err.line) == ("specs/llama3.yaml", line)
    assert err.field == "layers.body[12]"
    assert "unknown op 'sillu'" in str(err) and err.suggestion == "silu"
    assert str(err).startswith(f"specs/llama3.yaml:{line}: field 'layers.body[12]'")


def test_undefined_value_suggests_nearest():
    text, line = _edit("mul(mlp.act, mlp.up)", "mul(mlp.act, mlp.upp)")
    err = _error(text)
    assert err.line == line and "undefined value 'mlp.upp'" in str(err)
    assert err.suggestion == "mlp.up"


def test_wrong_arity():
    text, line = _edit("silu(mlp.gate)", "silu(mlp.gate, mlp.up)")
    err = _error(text)
    assert err.line == line and "takes 1 inputs (x), got 2" in str(err)


def test_unknown_attribute_suggests():
    text, line = _edit("rms_norm(h, attn_norm, eps=eps)", "rms_norm(h, attn_norm, epsilon=eps)")
    err = _error(text)
    assert err.line == line and "no attribute 'epsilon'" in str(err) and err.suggestion == "eps"


def test_shape_mismatch_says_expected_and_found():
    text, line = _edit("linear(mlp.prod, down_proj)", "linear(mlp.prod, up_proj)")
    err = _error(text)
    assert err.line == line
    assert "shape mismatch in linear 'layers.0/mlp/down'" in str(err)
    assert "input has 128 features" in str(err) and "expects 64" in str(err)


def test_missing_config_field_names_symbol_and_suggests():
    config = dict(CONFIG)
    config["hidden_sizes"] = config.pop("hidden_size")
    err = _error(SPEC_TEXT, config)
    assert err.line == SPEC_TEXT[:SPEC_TEXT.index("hidden:  ")].count("\n") + 1
    assert err.field == "config.hidden"
    assert "config.json has no field 'hidden_size'" in str(err)
    assert err.suggestion == "hidden_sizes"


def test_failed_check_reports_message():
    err = _error(SPEC_TEXT, dict(CONFIG, num_key_value_heads=3))
    assert "num_attention_heads must be a multiple of num_key_value_heads" in str(err)
    assert err.field == "checks[0]"


def test_unknown_top_level_key_suggests():
    text, line = _edit("epilogue:", "epilog:")
    err = _error(text)
    assert err.line == line and err.suggestion == "epilogue"


def test_invalid_yaml_names_line():
    text, line = _edit("  - h: embedding(tokens, embed)", "  - h: [embedding(tokens, embed)")
    err = _error(text)
    assert err.file == "specs/llama3.yaml" and err.line is not None and "invalid YAML" in str(err)


class FakeCheckpoint:
    """Names and shapes of a checkpoint (binding never needs the data)."""

    def __init__(self, shapes: dict):
        self.shapes = shapes

    def names(self):
        return list(self.shapes)

    def shape(self, name):
        return self.shapes[name]


def _llama_shapes():
    from rustinfer.compiler.spec import load_spec

    graph = bind(load_spec(SPEC_FILE), CONFIG)
    return {v.source: v.shape for v in graph.weights()}


def test_bind_accepts_a_matching_checkpoint():
    graph = bind(parse_spec(SPEC_TEXT, "specs/llama3.yaml"), CONFIG,
                 FakeCheckpoint(_llama_shapes()))
    assert graph.outputs == ["logits"]


def test_checkpoint_missing_weight_names_it_and_suggests():
    shapes = _llama_shapes()
    shapes["model.layers.1.mlp.up_proj.weights"] = shapes.pop("model.layers.1.mlp.up_proj.weight")
    err = _error(SPEC_TEXT, checkpoint=FakeCheckpoint(shapes))
    assert "the checkpoint has no weight 'model.layers.1.mlp.up_proj.weight'" in str(err)
    assert err.suggestion == "model.layers.1.mlp.up_proj.weights"
    assert err.field == "layers.weights.up_proj"
    assert err.line == SPEC_TEXT[:SPEC_TEXT.index("    up_proj:")].count("\n") + 1


def test_checkpoint_wrong_shape_says_expected_and_found():
    shapes = _llama_shapes()
    shapes["model.layers.0.self_attn.k_proj.weight"] = (64, 64)
    err = _error(SPEC_TEXT, checkpoint=FakeCheckpoint(shapes))
    assert "has shape [64, 64] in the checkpoint, expected [32, 64]" in str(err)
    assert "[n_kv_heads * head_dim, hidden]" in str(err)


def test_untied_head_requires_lm_head_weight():
    shapes = _llama_shapes()            # tie_word_embeddings defaults to false
    shapes.pop("lm_head.weight")
    err = _error(SPEC_TEXT, checkpoint=FakeCheckpoint(shapes))
    assert "no weight 'lm_head.weight'" in str(err)


def test_unsupported_rope_scaling_is_a_spec_error():
    config = dict(CONFIG, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    err = _error(SPEC_TEXT, config)
    assert "rope scaling type 'yarn' is not supported" in str(err)
