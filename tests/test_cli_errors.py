"""The CLIs' error paths, as a new user meets them: one `error: ...` line, exit 2, no
traceback, before any model loads. Fast: no test here loads or compiles a model."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rustinfer.compiler import cli as compile_cli
from rustinfer.runtime import cli as rustinfer_cli
from rustinfer.server import cli as server_cli

BAD_MODELS = {
    "missing path": ("/nonexistent/model", "no such file or folder"),
    "alias unknown": ("no-such-alias", "one of the aliases: smollm2-135m-instruct"),
    "folder without config": ("{tmp}", "this folder has no config.json"),
    "file not gguf": ("{tmp}/notes.txt", "not a GGUF file"),
}


def _no_engine(*args, **kwargs):
    raise AssertionError(f"an engine was started: {args}")


def _one_error_line(err: str, *wanted: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in wanted:
        assert text in err, (text, err)


@pytest.fixture()
def bad_model(request, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    model, message = BAD_MODELS[request.param]
    return model.format(tmp=tmp_path), message


@pytest.fixture()
def no_gpu(monkeypatch):
    """This machine as one without a CUDA GPU or triton, whatever it really has."""
    import importlib.util

    import torch

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "triton" else find_spec(name, *a))


# ----------------------------------------------------------------- --model ---
@pytest.mark.parametrize("bad_model", list(BAD_MODELS), indirect=True)
@pytest.mark.parametrize("command", ["generate", "chat", "bench"])
def test_a_bad_model_is_one_error_line(command, bad_model, capsys):
    model, message = bad_model
    argv = [command, "--model", model] + (["Hi"] if command == "generate" else [])
    assert rustinfer_cli.main(argv) == 2
    _one_error_line(capsys.readouterr().err, message, model)


@pytest.mark.parametrize("bad_model", list(BAD_MODELS), indirect=True)
def test_compile_a_bad_model_is_one_error_line(bad_model, tmp_path, capsys):
    model, message = bad_model
    assert compile_cli.main(["--model", model, "--out", str(tmp_path / "out")]) == 2
    _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["rustinfer.runtime.cli", "rustinfer.compiler.cli"])
def test_the_installed_commands_print_no_traceback(tool, tmp_path):
    argv = ["generate", "Hi"] if tool.endswith("runtime.cli") else ["--out", str(tmp_path)]
    out = subprocess.run([sys.executable, "-m", tool, *argv, "--model", "/nonexistent/model"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    _one_error_line(out.stderr, "/nonexistent/model: no such file or folder")


# ------------------------------------------------------------------ --target ---
def test_cuda_without_a_gpu_is_one_error_line_before_the_model_loads(no_gpu, capsys):
    # the model does not exist either: the target is checked first, in a second
    assert rustinfer_cli.main(["generate", "--target", "cuda", "--model", "/nonexistent",
                               "Hi"]) == 2
    _one_error_line(capsys.readouterr().err, "the cuda target needs an NVIDIA GPU visible to "
                    "torch, and triton", "triton is not installed", "use --target cpu")


def test_cuda_problem_names_what_is_missing(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert rustinfer_cli.cuda_problem() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert f"torch {torch.__version__}" in rustinfer_cli.cuda_problem()
    assert "triton" not in rustinfer_cli.cuda_problem().split("(here")[1]


# ---------------------------------------------------- rustinfer-compile options ---
@pytest.mark.parametrize("argv, message", [
    (["--quant", "int4"], "--quant applies to --target cpu (this run: cpu-torch)"),
    (["--target", "cuda", "--quant", "int8"], "--quant applies to --target cpu (this run: cuda)"),
    (["--target", "cpu", "--max-tokens", "64"], "--max-tokens applies to the plan.py targets"),
    (["--target", "cpu", "--no-memory-plan", "--no-verify"],
     "--no-memory-plan, --no-verify apply to the plan.py targets"),
])
def test_compile_refuses_options_its_target_ignores(argv, message, tmp_path, capsys):
    # checked before the model is even resolved: /nonexistent is never looked at
    assert compile_cli.main([*argv, "--model", "/nonexistent", "--out",
                             str(tmp_path / "out")]) == 2
    _one_error_line(capsys.readouterr().err, message)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ inspect ---
def _fake_compile_output(folder, onnx: bool):
    folder.mkdir()
    (folder / "report.txt").write_text("passes        fuse_qkv x2\ncompile time  12 ms")  # no \n
    if onnx:
        for name in ("model.onnx", "graph.txt", "weights.txt"):
            (folder / name).write_text("")
    else:
        (folder / "plan.py").write_text("# plan\n")
    return folder


def test_inspect_ends_the_report_with_a_newline(tmp_path, capsys):
    folder = _fake_compile_output(tmp_path / "onnx", onnx=True)
    assert rustinfer_cli.main(["inspect", str(folder)]) == 0
    assert capsys.readouterr().out.endswith("compile time  12 ms\n")


@pytest.mark.parametrize("flag", ["--plan", "--memory"])
def test_inspect_plan_or_memory_of_an_onnx_folder_points_at_its_files(flag, tmp_path, capsys):
    folder = _fake_compile_output(tmp_path / "onnx", onnx=True)
    assert rustinfer_cli.main(["inspect", str(folder), flag]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, "--plan and --memory apply to plan.py targets",
                    str(folder / "graph.txt"), str(folder / "weights.txt"))
    assert "Errno" not in captured.err


def test_inspect_names_a_missing_file_instead_of_an_errno(tmp_path, capsys):
    folder = _fake_compile_output(tmp_path / "plan", onnx=False)
    assert rustinfer_cli.main(["inspect", str(folder), "--plan", "--memory"]) == 2
    _one_error_line(capsys.readouterr().err, "has no memory.txt")
    assert rustinfer_cli.main(["inspect", str(folder), "--plan"]) == 0
    assert capsys.readouterr().out == "passes        fuse_qkv x2\ncompile time  12 ms\n# plan\n"


# -------------------------------------------------------------------- serve ---
def test_rustinfer_help_lists_serve(capsys):
    with pytest.raises(SystemExit) as exit_:
        rustinfer_cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{serve,generate,chat,bench,inspect}" in out and "rustinfer-serve" in out


def test_rustinfer_serve_is_rustinfer_serves_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        rustinfer_cli.main(["serve", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rustinfer serve") and "--port" in out and "--api-key" in out


@pytest.mark.parametrize("bad_model", list(BAD_MODELS), indirect=True)
@pytest.mark.parametrize("entry", ["rustinfer serve", "rustinfer-serve"])
def test_serve_a_bad_model_fails_before_starting(entry, bad_model, monkeypatch, capsys):
    model, message = bad_model
    monkeypatch.setattr(server_cli.subprocess, "Popen", _no_engine)
    argv = ["--model", model, "--port", "1"]
    code = (rustinfer_cli.main(["serve", *argv]) if entry == "rustinfer serve"
            else server_cli.serve_main(argv))
    assert code == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, message)
    assert "starting on" not in captured.err + captured.out


@pytest.mark.parametrize("argv, message", [
    (["--target", "bogus"], "unknown target 'bogus'"),
    (["--target", "cpu-torch", "--quant", "int4"], "--quant and --threads apply to --target cpu"),
    (["--target", "cuda"], "the cuda target needs an NVIDIA GPU"),
])
def test_serve_refuses_a_target_it_cannot_run(argv, message, no_gpu, monkeypatch, capsys):
    monkeypatch.setattr(server_cli.subprocess, "Popen", _no_engine)
    assert server_cli.serve_main([*argv, "--port", "1"]) == 2
    _one_error_line(capsys.readouterr().err, message)


def test_serve_on_a_busy_port_fails_before_starting(monkeypatch, capsys):
    import socket

    monkeypatch.setattr(server_cli.subprocess, "Popen", _no_engine)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert server_cli.serve_main(["--port", str(port)]) == 2
    _one_error_line(capsys.readouterr().err, f"port {port} on 127.0.0.1 is already in use",
                    "--port")


def test_serve_subprocess_bad_model_exits_at_once_without_listening():
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "rustinfer.server.cli", "serve", "--model",
                          "/nonexistent/model", "--port", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    _one_error_line(out.stderr, "/nonexistent/model: no such file or folder")
    assert time.monotonic() - started < 60


def test_http_side_says_starting_then_ready(tmp_path, smollm2_gguf):
    """The first line does not read as ready; 'ready on' comes once requests are served."""
    import httpx
    from test_server_support import FakeStack, free_port, wait_healthy

    stack = FakeStack(tmp_path, smollm2_gguf)
    port = free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "rustinfer.server.cli", "server",
                             "--socket-dir", str(tmp_path / "sock"), "--port", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 120, proc)
        deadline = time.monotonic() + 10
        while "ready on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log.read_text()
        assert "listening on" not in text
        starting = text.index(f"starting on http://127.0.0.1:{port}")
        first = text[starting:].splitlines()[0]
        assert "answers 503 until it logs that it is ready" in first
        assert "ready on" not in first          # scripts wait for "ready on": only when ready
        assert text.index(f"ready on http://127.0.0.1:{port}") > starting
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stack.close()


# --------------------------------------------------------------- tokenizers ---
def _weights_only_folder(folder):
    from safetensors.torch import save_file
    import torch

    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    save_file({"model.embed_tokens.weight": torch.zeros(4, 8)}, str(folder / "model.safetensors"))
    return folder


def _weights_only_gguf(path):
    from test_checkpoint_gguf import Q, random_state_dict, tiny_config, write_gguf

    cfg = tiny_config(num_hidden_layers=1)
    write_gguf(path, cfg, random_state_dict(cfg), lambda hf, v: Q.F32)  # no tokenizer.ggml.*
    return path


@pytest.mark.parametrize("kind", ["folder", "gguf"])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_no_tokenizer_is_one_error_line_before_the_model_loads(command, kind, tmp_path,
                                                               monkeypatch, capsys):
    from rustinfer.runtime import llm

    monkeypatch.setattr(llm.LLM, "__init__", _no_engine)  # said before loading / compiling
    model = (_weights_only_folder(tmp_path / "m") if kind == "folder"
             else _weights_only_gguf(tmp_path / "m.gguf"))
    argv = [command, "--model", str(model)] + (["Hi"] if command == "generate" else [])
    assert rustinfer_cli.main(argv) == 2
    wanted = "tokenizer.json" if kind == "folder" else "no tokenizer.ggml.* metadata"
    _one_error_line(capsys.readouterr().err, f"{model} has no tokenizer", wanted)


def test_a_gguf_without_a_tokenizer_loads_for_token_ids(tmp_path):
    from rustinfer.runtime import LLM

    llm = LLM(model=_weights_only_gguf(tmp_path / "m.gguf"), target="reference",
              max_model_len=16)
    assert llm.tokenizer is None and llm.logits([1, 2, 3]).shape == (3, 96)


def _folder_without_chat_template(folder):
    """A tiny llama with a word-level tokenizer that is not Llama 3's, and no chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hf_models import make_llama

    make_llama(folder, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, vocab_size=16)
    words = ["<s>", "</s>", "[UNK]", "Hi", "there"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    return folder


def test_no_chat_template_says_to_use_raw_and_raw_works(tmp_path, capsys):
    """The built-in Llama 3 template would write its headers as plain text in this
    vocabulary (a prompt of [UNK]s): generate without --raw must refuse, not answer."""
    model = str(_folder_without_chat_template(tmp_path / "m"))
    capsys.readouterr()  # transformers' progress bars
    base = ["generate", "--target", "reference", "--model", model, "--max-tokens", "2"]
    assert rustinfer_cli.main(base + ["Hi there"]) == 2
    _one_error_line(capsys.readouterr().err, "has no chat template", "generate --raw")
    assert rustinfer_cli.main(base + ["--raw", "Hi there"]) == 0


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_serve_a_model_without_a_tokenizer_fails_before_starting(kind, tmp_path, monkeypatch,
                                                                 capsys):
    """It used to start, load the model, then answer 503 'loading the tokenizer' forever."""
    monkeypatch.setattr(server_cli.subprocess, "Popen", _no_engine)
    model = (_weights_only_folder(tmp_path / "m") if kind == "folder"
             else _weights_only_gguf(tmp_path / "m.gguf"))
    assert server_cli.serve_main(["--model", str(model), "--port", "1"]) == 2
    _one_error_line(capsys.readouterr().err, f"{model} has no tokenizer",
                    "the server needs one")


def test_engine_refuses_a_model_without_a_tokenizer(tmp_path, monkeypatch):
    from rustinfer.runtime.engine import Engine

    monkeypatch.setattr(Engine, "from_model", _no_engine)
    model = _weights_only_folder(tmp_path / "m")
    assert server_cli.engine_main(["--model", str(model), "--socket-dir",
                                   str(tmp_path / "sock")]) == 1


def test_http_side_says_why_the_tokenizer_did_not_load(tmp_path):
    import asyncio
    import types

    from rustinfer.server.state import ServerState

    async def run():
        ready = asyncio.Event()
        ready.set()
        client = types.SimpleNamespace(ready=ready, alive=True, dead_reason=None,
                                       info={"model_path": str(tmp_path)}, on_stats=None)
        state = ServerState(client)
        await state.load_tokenizer_when_ready()
        return state

    state = asyncio.run(run())
    assert not state.ready
    assert state.not_ready_reason.startswith(f"cannot load the tokenizer from {tmp_path}: ")
    assert "no tokenizer.json" in state.not_ready_reason


# ---------------------------------------------------------------- --schema ---
@pytest.mark.parametrize("schema, wanted", [
    ("/nonexistent/schema.json", "No such file"),
    ('{"type": "object",', "--schema is not JSON"),
    ('{"type": "string", "format": "ipv4network"}', "format 'ipv4network' not supported"),
    ('{"type": "integer", "minimum": 3, "maximum": 1}', "no integer meets")])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_a_bad_schema_is_one_error_line_before_any_model_loads(command, schema, wanted, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(rustinfer_cli, "_load", _no_engine)
    monkeypatch.setattr(rustinfer_cli, "_no_tokenizer", _no_engine)
    argv = [command] + (["a prompt"] if command == "generate" else []) + ["--schema", schema]
    assert rustinfer_cli.main(argv) == 2
    _one_error_line(capsys.readouterr().err, wanted)
