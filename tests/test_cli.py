"""The command-line tools, driven as a user would (in-process for speed)."""
from __future__ import annotations

import pytest

from hf_models import PARITY_CONFIGS, make_llama
from rustinfer.compiler import cli as compile_cli
from rustinfer.runtime import cli as rustinfer_cli


@pytest.fixture()
def tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "cache"))
    make_llama(tmp_path / "model", **PARITY_CONFIGS["gqa-tied"])
    return tmp_path / "model"


def test_compile_writes_plan_dumps_memory_and_report_then_hits_cache(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    assert compile_cli.main(["specs/llama3.yaml", "--model", str(tiny_model), "--out", str(out),
                             "--dump", str(tmp_path / "dump")]) == 0
    first = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "dump").iterdir())[:2] == ["00-parsed.txt",
                                                                       "01-fuse_qkv.txt"]
    assert "compiled" in first and "fuse_qkv x2" in first and "naive" in first
    for name in ("plan.py", "report.txt", "memory.txt", "memory.json", "passes/00-parsed.txt",
                 "passes/01-fuse_qkv.txt"):
        assert (out / name).exists(), name
    import json
    memory = json.loads((out / "memory.json").read_text())
    assert memory["planned_bytes"] < memory["naive_bytes"]
    assert compile_cli.main(["specs/llama3.yaml", "--model", str(tiny_model), "--out", str(out)]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert rustinfer_cli.main(["inspect", str(out), "--memory"]) == 0
    shown = capsys.readouterr().out
    assert "fuse_rope_kv x2" in shown and "offset" in shown


def test_memory_numbers_and_inspect_print_each_thing_once(tiny_model, tmp_path, capsys):
    """memory.txt states its totals once, rounded as report.txt rounds them; `inspect --plan
    --memory` prints the slot table and the report's header once each (plan.py's docstring
    repeats both)."""
    import re

    out = tmp_path / "out"
    assert compile_cli.main(["specs/llama3.yaml", "--model", str(tiny_model), "--out", str(out),
                             "--max-tokens", "64"]) == 0
    capsys.readouterr()
    report, memory = (out / "report.txt").read_text(), (out / "memory.txt").read_text()
    assert memory.count("memory plan for MAX_TOKENS = 64 tokens per step") == 1
    planned = re.search(r"planned (\d+\.\d) MiB", report).group(1)
    assert f"bytes ({planned} MiB): the arena" in memory
    bound = re.search(r"lower bound (\d+\.\d) MiB", report).group(1)
    assert f"bytes ({bound} MiB): the peak of simultaneously live bytes" in memory

    assert rustinfer_cli.main(["inspect", str(out), "--plan", "--memory"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("Slot table:") == 1 and shown.count("lower bound") == 2   # report, memory
    assert shown.count("passes        fuse_qkv x2") == 1
    assert "Memory plan: memory.txt, above." in shown and "def run(step" in shown
    assert rustinfer_cli.main(["inspect", str(out), "--plan"]) == 0
    alone = capsys.readouterr().out                      # without --memory: plan.py's table
    assert alone.count("Slot table:") == 1 and alone.count("passes        fuse_qkv x2") == 1


def test_compile_for_the_cuda_target_needs_no_gpu(tiny_model, tmp_path, capsys):
    """The cuda plan, with the norms, residual adds, SwiGLU and RoPE in its GEMMs, is
    readable on any machine: compiling it needs no GPU."""
    out = tmp_path / "cuda"
    assert compile_cli.main(["--model", str(tiny_model), "--target", "cuda", "--out",
                             str(out)]) == 0
    assert "fuse_norm_linear x" in capsys.readouterr().out
    plan = (out / "plan.py").read_text()
    for call in ("K.rms_norm_linear_rope_kv(", "K.linear_add(", "act='swiglu'"):
        assert call in plan, call
    assert "K.add_rms_norm(" not in plan and "K.swiglu(" not in plan
    assert (out / "passes" / "07-fuse_norm_linear.txt").exists()


def test_compile_for_the_onnx_cpu_target(tiny_model, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert compile_cli.main(["--model", str(tiny_model), "--target", "cpu", "--quant", "int4",
                             "--out", str(out), "--dump", str(tmp_path / "dump")]) == 0
    assert "MatMulNBits" in capsys.readouterr().out
    assert (tmp_path / "dump" / "00-parsed.txt").exists()     # --dump works for cpu too
    import onnx

    import onnxruntime

    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert any(n.op_type == "GroupQueryAttention" for n in model.graph.node)
    onnxruntime.InferenceSession(str(out / "model.onnx"))     # the folder stands on its own
    assert rustinfer_cli.main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "compile time" in shown and shown.endswith("\n")
    # which spec and model, as a plan target's report says (it used to start at 'target')
    assert shown.startswith("spec          specs/llama3.yaml (family llama3)\n"
                            "model         LlamaForCausalLM, 2 layers, hidden 64\n"
                            "target        cpu (ONNX Runtime), quant int4")
    # no plan.py / memory.txt here: inspect says where to look instead of a raw errno
    assert rustinfer_cli.main(["inspect", str(out), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "--plan and --memory apply to plan.py targets" in err
    assert (out / "graph.txt").exists() and (out / "weights.txt").exists()
    assert str(out / "graph.txt") in err and str(out / "weights.txt") in err


def test_compile_reports_spec_errors_with_file_and_line(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(open("specs/llama3.yaml").read().replace("silu(mlp.gate)", "sillu(mlp.gate)"))
    assert compile_cli.main([str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "unknown op 'sillu'" in err and "did you mean 'silu'" in err


def test_inspect_explains_a_folder_without_compile_output(tmp_path, capsys):
    assert rustinfer_cli.main(["inspect", str(tmp_path)]) == 2
    assert "run `rustinfer-compile" in capsys.readouterr().err


def test_generate_without_tokenizer_says_so(tiny_model, capsys):
    assert rustinfer_cli.main(["generate", "hi", "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer" in err and "tokenizer.json" in err and "token ids" in err


@pytest.mark.slow
def test_generate_streams_an_answer_from_the_default_model(smollm2_gguf, capsys):
    assert rustinfer_cli.main(["generate", "What is the capital of France?",
                               "--max-tokens", "24"]) == 0
    assert "Paris" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_json_answers_one_object(smollm2_gguf, capsys):
    import json

    assert rustinfer_cli.main(["generate", "What is the capital of France? Answer in JSON.",
                               "--model", str(smollm2_gguf), "--json", "--max-tokens", "48"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), dict)


@pytest.mark.slow
def test_generate_schema_answers_an_instance(smollm2_gguf, tmp_path, capsys):
    """--schema takes the schema inline or from a file (response_format json_schema)."""
    import json

    schema = {"type": "object", "required": ["city", "year"], "properties": {
        "city": {"type": "string", "maxLength": 20}, "year": {"type": "integer",
                                                             "minimum": 1000, "maximum": 2100}}}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    for given in (json.dumps(schema), str(tmp_path / "s.json")):
        assert rustinfer_cli.main(["generate", "Name a city and the year it was founded.",
                                   "--model", str(smollm2_gguf), "--schema", given,
                                   "--max-tokens", "48"]) == 0
        value = json.loads(capsys.readouterr().out)
        assert list(value) == ["city", "year"] and 1000 <= value["year"] <= 2100, value


@pytest.mark.slow
def test_chat_keeps_the_conversation(smollm2_gguf, monkeypatch, capsys):
    lines = iter(["What is the capital of France?", "And of Italy?", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert rustinfer_cli.main(["chat", "--max-tokens", "24"]) == 0
    answers = capsys.readouterr().out.strip().splitlines()
    assert "Paris" in answers[0] and "Rome" in answers[1]


def test_bench_reports_prefill_decode_and_batches(tiny_model, capsys):
    import re

    assert rustinfer_cli.main(["bench", "--model", str(tiny_model), "--prompt-tokens", "20",
                               "--new-tokens", "6", "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "on cpu" in out and "threads" in out               # the default target here
    rates = {name: float(value) for name, value in
             re.findall(r"^(prefill|decode|batch)\s.*?([\d.]+) tok/s", out, re.M)}
    assert set(rates) == {"prefill", "decode", "batch"} and min(rates.values()) > 0
    assert "over 5 steps" in out                              # 6 tokens: 1 from the prefill


def test_compile_refuses_quant_for_a_plan_target(tiny_model, tmp_path, capsys):
    """--quant lowers weights for ONNX Runtime: with the default target (cpu-torch) it would
    be ignored, so it is refused, as `rustinfer generate` refuses it."""
    out = tmp_path / "out"
    assert compile_cli.main(["--model", str(tiny_model), "--quant", "int4", "--out",
                             str(out)]) == 2
    assert "--quant applies to --target cpu" in capsys.readouterr().err
    assert not out.exists()


def test_bench_refuses_cpu_options_elsewhere(tiny_model, capsys):
    assert rustinfer_cli.main(["bench", "--model", str(tiny_model), "--target", "cpu-torch",
                               "--quant", "int4"]) == 2
    assert "--quant and --threads apply to --target cpu" in capsys.readouterr().err
