"""Every class of spec / config / checkpoint error names file, line and field, and suggests."""
from __future__ import annotations

from pathlib import Path

import pytest

from rustinfer.compiler.bind import bind
from rustinfer.compiler.errors import SpecError
from rustinfer.compiler.spec import SPECS_DIR, parse_spec

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
    assert err.line == line and "takes 1 input (x), got 2" in str(err)


def test_unknown_attribute_suggests():
    text, line = _edit("rms_norm(h, attn_norm, eps=eps)", "rms_norm(h, attn_norm, epsilon=eps)")
    err = _error(text)
    assert err.line == line and "no attribute 'epsilon'" in str(err) and err.suggestion == "eps"


def test_shape_mismatch_says_expected_and_found():
    text, line = _edit("linear(mlp.prod, down_proj, down_bias)",
                       "linear(mlp.prod, up_proj, down_bias)")
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


def test_an_untied_head_that_is_missing_points_at_tie_word_embeddings():
    config = dict(CONFIG, tie_word_embeddings=False)
    shapes = {k: v for k, v in _llama_shapes().items() if k != "lm_head.weight"}
    err = str(_error(SPEC_TEXT, config, checkpoint=FakeCheckpoint(shapes)))
    assert "the checkpoint has no weight 'lm_head.weight', and the config does not tie it" in err
    assert "set tie_word_embeddings: true in config.json" in err
    assert "did you mean" not in err     # not model.norm.weight


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


def test_unsupported_rope_scaling_is_a_spec_error_not_called_a_shape_mismatch():
    config = dict(CONFIG, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    err = str(_error(SPEC_TEXT, config))
    assert "shape mismatch" not in err
    assert ("cannot compute rope 'layers.0/attn/q_rot': config.json's rope_scaling type 'yarn' "
            "is not supported (supported: default, linear, llama3, longrope)") in err


# --- attribute types -------------------------------------------------------------

ATTENTION = "attention(attn.q_rot, attn.k_rot, attn.v, heads=n_heads, kv_heads=n_kv_heads, " \
            "head_dim=head_dim)"


def test_attribute_of_wrong_type_names_line_field_and_type():
    text, line = _edit(ATTENTION, ATTENTION[:-1] + ", window=True)")
    err = _error(text)
    assert (err.file, err.line, err.field) == ("specs/llama3.yaml", line, "layers.body[6]")
    assert "op 'attention': window must be an int >= 0 or None, got True (bool)" in str(err)


def test_a_number_in_quotes_is_not_a_number():
    text, line = _edit("rms_norm(h, attn_norm, eps=eps)", 'rms_norm(h, attn_norm, eps="1e-6")')
    err = _error(text)
    assert (err.line, err.field) == (line, "layers.body[0]")
    assert "op 'rms_norm': eps must be a number >= 0, got '1e-6' (str)" in str(err)
    assert "drop the quotes" in str(err)


def test_a_string_where_an_int_belongs_is_a_spec_error_not_a_traceback():
    text, line = _edit("heads=n_heads, kv_heads", 'heads="five", kv_heads')
    err = _error(text)
    assert (err.line, err.field) == (line, "layers.body[6]")
    assert "op 'attention': heads must be an int >= 1, got 'five' (str)" in str(err)


def test_attribute_expressions_are_checked_after_evaluation():
    # A config.json field of the wrong type reaches the op through a symbol.
    line = SPEC_TEXT[:SPEC_TEXT.index("rms_norm(h, attn_norm")].count("\n") + 1
    err = _error(SPEC_TEXT, dict(CONFIG, rms_norm_eps="1e-5"))
    assert (err.line, err.field) == (line, "layers.body[0]")
    assert "eps must be a number >= 0, got '1e-5' (str)" in str(err)
    assert "(from eps=eps)" in str(err)


def test_bool_is_not_an_int_but_an_int_is_a_number():
    text, line = _edit("positions, heads=n_kv_heads", "positions, heads=False")
    err = _error(text)
    assert err.line == line and "heads must be an int >= 1, got False (bool)" in str(err)
    text, _ = _edit("rms_norm(h, attn_norm, eps=eps)", "rms_norm(h, attn_norm, eps=eps, offset=1)")
    graph = bind(parse_spec(text, "specs/llama3.yaml"), CONFIG)
    assert graph.nodes[1].attrs["offset"] == 1


def test_config_value_of_wrong_type_in_an_expression():
    err = _error(SPEC_TEXT, dict(CONFIG, num_attention_heads="four"))
    assert err.field == "config.head_dim"
    assert "cannot evaluate 'hidden // n_heads' with values 64 (int), 'four' (str)" in str(err)


# --- values computed but never used --------------------------------------------------

def test_a_value_never_used_is_an_error():
    # It would also keep fuse_gate_up_swiglu from firing (mlp.gate gains a reader).
    text, line = _edit("    - mlp.down:", "    - mlp.dbg: mul(mlp.gate, mlp.up)\n    - mlp.down:")
    err = _error(text)
    assert (err.line, err.field) == (line, "layers.body[14]")
    assert str(err).endswith("value 'mlp.dbg' is computed but never used; "
                             "use it or delete the line")


def test_an_input_wired_past_a_value_leaves_it_unused():
    text, _ = _edit(ATTENTION, ATTENTION.replace("attn.k_rot", "attn.k"))
    err = _error(text)
    assert err.line == SPEC_TEXT[:SPEC_TEXT.index("- attn.k_rot")].count("\n") + 1
    assert "value 'attn.k_rot' is computed but never used" in str(err)


def test_unused_value_whose_reader_is_left_out_by_when():
    text, line = _edit("    - mlp.down:", "    - mlp.dbg: mul(mlp.gate, mlp.up)\n"
                       "    - mlp.dbg2: silu(mlp.dbg)\n      when: tied\n    - mlp.down:")
    err = _error(text)
    assert err.line == line and "value 'mlp.dbg' is computed but never used" in str(err)
    assert f"line {line + 1}, are left out by their `when:`" in str(err)


def test_a_weight_never_used_is_a_warning():
    from rustinfer.compiler.errors import SpecWarning

    text, line = _edit("    down_proj:", "    spare_bias: {name: \"model.layers.{i}.mlp.spare"
                       ".bias\", shape: [hidden]}\n    down_proj:")
    with pytest.warns(SpecWarning) as record:
        bind(parse_spec(text, "specs/llama3.yaml"), CONFIG)
    assert [str(w.message) for w in record] == [
        f"specs/llama3.yaml:{line}: field 'layers.weights.spare_bias': weight 'spare_bias' is "
        "declared but no op reads it; pass it to an op or delete the line"]


# --- message quality ---------------------------------------------------------------

def test_unknown_op_under_another_name_suggests_the_spec_op():
    text, line = _edit("silu(mlp.gate)", "swish(mlp.gate)")
    err = _error(text)
    assert err.line == line and err.suggestion == "silu"
    assert str(err).endswith("unknown op 'swish'; did you mean 'silu'?")
    text, _ = _edit("silu(mlp.gate)", "gelu_new(mlp.gate)")
    assert "write gelu(...) with approximate='tanh'" in str(_error(text))


def test_unknown_op_without_a_close_name_lists_the_ops():
    text, line = _edit("silu(mlp.gate)", "frobnicate(mlp.gate)")
    err = _error(text)
    assert err.line == line and err.suggestion is None
    assert "unknown op 'frobnicate' (spec ops: add, attention, embedding, gelu, linear, mul, " \
           "rms_norm, rope, scale, silu, softcap)" in str(err)
    text, _ = _edit("silu(mlp.gate)", "swiglu(mlp.gate)")
    assert "unknown op 'swiglu': it is a fused op that compiler passes introduce" in \
        str(_error(text))


def test_a_bare_word_compared_with_a_string_needs_quotes():
    assert "  act:          {field: hidden_act" in SPEC_TEXT   # llama3.yaml binds `act`
    text = SPEC_TEXT.replace("checks:\n", "checks:\n  - expr: act == silu\n")
    line = text[:text.index("act == silu")].count("\n") + 1
    err = _error(text)
    assert (err.line, err.field) == (line, "checks[0]")
    assert str(err).endswith("undefined symbol 'silu' (a string needs quotes: 'silu')")
    # a tuple of choices, and a `when:` that names a config string value
    err = _error(text.replace("act == silu", "act in (gelu, 'silu')"))
    assert "undefined symbol 'gelu' (a string needs quotes: 'gelu')" in str(err)
    text = text.replace("  - expr: act == silu\n", "")
    assert text.count("silu(mlp.gate)\n") == 1
    text = text.replace("silu(mlp.gate)\n", "silu(mlp.gate)\n      when: silu\n")
    assert "undefined symbol 'silu' (a string needs quotes: 'silu')" in str(_error(text))


def test_undeclared_weight_says_where_to_declare_it():
    text, line = _edit("    down_proj: {name: \"model.layers.{i}.mlp.down_proj.weight\", "
                       "shape: [hidden, ffn]}\n", "")
    err = _error(text)
    weights_line = SPEC_TEXT[:SPEC_TEXT.index("  weights:\n    attn_norm")].count("\n") + 1
    assert err.line == SPEC_TEXT[:SPEC_TEXT.index("- mlp.down:")].count("\n")  # one line up
    assert ("undefined value 'down_proj' used by op 'linear': it is neither a declared weight "
            "nor a computed value; declare it under `layers.weights:` "
            f"(line {weights_line}) or compute it above this line") in str(err)
    assert err.suggestion is None


def test_undeclared_bias_suggests_only_close_names():
    qwen3 = SPEC_FILE.with_name("qwen3.yaml").read_text()
    assert qwen3.count("linear(mlp.prod, down_proj)") == 1
    text = qwen3.replace("linear(mlp.prod, down_proj)", "linear(mlp.prod, down_proj, down_bias)")
    err = _error(text, dict(CONFIG, head_dim=16))
    assert "undefined value 'down_bias'" in str(err) and "neither a declared weight" in str(err)
    assert err.suggestion is None                       # not 'o_bias'


def test_value_used_before_it_is_computed_or_weight_out_of_reach():
    text, line = _edit("add(h, attn.o)", "add(h, mlp.x)")
    err = _error(text)
    later = SPEC_TEXT[:SPEC_TEXT.index("- mlp.x:")].count("\n") + 1
    assert err.line == line and f"it is computed later, at line {later}" in str(err)
    text, line = _edit("embedding(tokens, embed)", "embedding(tokens, q_proj)")
    err = _error(text)
    assert err.line == line and "'q_proj' is a per-layer weight" in str(err)


def test_arity_uses_singular_and_plural():
    text, _ = _edit("mul(mlp.act, mlp.up)", "mul(mlp.act)")
    assert "op 'mul' takes 2 inputs (a, b), got 1" in str(_error(text))
    text, _ = _edit("linear(mlp.prod, down_proj, down_bias)", "linear(mlp.prod)")
    assert "op 'linear' takes 2 to 3 inputs (x, weight, [bias]), got 1" in str(_error(text))


def test_invalid_yaml_names_the_unclosed_bracket_and_where_parsing_stopped():
    text, line = _edit("  - h: embedding(tokens, embed)", "  - h: {embedding(tokens, embed)")
    err = _error(text)
    assert err.line == line
    assert f"the '{{' opened at line {line} is not closed" in str(err)
    stopped = SPEC_TEXT[:SPEC_TEXT.index("\nlayers:")].count("\n") + 2
    assert f"at line {stopped}" in str(err)   # the next key, where PyYAML noticed
    text, line = _edit("  hidden:       {field: hidden_size}\n",
                       "  hidden:       {field: hidden_size}\n   oops: 1\n")
    err = _error(text)
    assert err.line == line + 1 and "while parsing a block mapping that starts at line" in str(err)


def test_unread_checkpoint_tensor_warning_is_one_clean_line():
    import warnings

    from rustinfer.compiler.errors import SpecWarning

    shapes = _llama_shapes()
    shapes["model.layers.0.mlp.down_proj.bias"] = (64,)
    with pytest.warns(SpecWarning) as record:
        bind(parse_spec(SPEC_TEXT, "specs/llama3.yaml"), CONFIG, FakeCheckpoint(shapes))
    (w,) = record
    shown = warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
    assert shown == ("rustinfer: WARNING: specs/llama3.yaml: the checkpoint has 1 tensor(s) the "
                     "spec never reads: model.layers.0.mlp.down_proj.bias\n")



def test_unread_tensors_of_another_family_name_the_spec_that_serves_it():
    """--spec llama3.yaml on a Qwen2 checkpoint: its q/k/v biases are unread and the
    answers wrong; the warning says which spec the checkpoint is for."""
    from rustinfer.compiler.errors import SpecWarning

    shapes = _llama_shapes()
    shapes["model.layers.0.self_attn.q_proj.bias"] = (64,)
    config = dict(CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    with pytest.warns(SpecWarning) as record:
        bind(parse_spec(SPEC_TEXT, "specs/llama3.yaml"), config, FakeCheckpoint(shapes))
    (w,) = record
    assert str(w.message).endswith("; this spec is for LlamaForCausalLM, the checkpoint is "
                                   f"Qwen2ForCausalLM ({SPECS_DIR / 'qwen2.yaml'} serves it): "
                                   "its answers will be wrong")


def test_an_architecture_no_spec_serves_lists_the_ones_served():
    from rustinfer.compiler.bind import select_spec

    with pytest.raises(SpecError) as info:
        select_spec({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    err = str(info.value)
    assert err.startswith(f"{SPECS_DIR}: no spec here serves architectures ['GPT2LMHeadModel']")
    assert "(they serve Gemma2ForCausalLM, LlamaForCausalLM, MistralForCausalLM, " in err
    assert "pass --spec" in err and "<spec>" not in err
