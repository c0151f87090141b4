"""`rustinfer serve | generate | chat | bench | inspect`: the command-line front door.

Errors the user can fix (a bad --model, an option the target does not take, a target
this machine cannot run) print one `error: ...` line and exit 2, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hugging Face folder, .gguf file or alias "
                   "(default: smollm2-135m-instruct, fetched once into $RUSTINFER_CACHE)")
    from .targets import TARGETS

    p.add_argument("--target", default="auto", choices=["auto", *TARGETS],
                   help="where the model runs: auto (default: cuda with a GPU, else cpu); cpu, "
                        "ONNX Runtime (fp32, or int4/int8 with --quant); cpu-torch, the compiled "
                        "plan on torch kernels; cuda, Triton kernels + CUDA graphs; reference, "
                        "the IR interpreter (the oracle)")
    p.add_argument("--quant", choices=["none", "int4", "int8"],
                   help="cpu target: weight quantization (default: none = float32, or int4 "
                        "when float32 weights would take over half the available memory)")
    p.add_argument("--threads", type=int, help="cpu target: ONNX Runtime threads "
                   "(default: physical cores)")
    p.add_argument("--spec", help="spec file (default: chosen from config.json)")
    p.add_argument("--max-model-len", type=int, help="context length to size the KV cache for")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 picks the most likely token (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="answer with one JSON object (response_format json_object)")
    p.add_argument("--schema", metavar="FILE_OR_JSON",
                   help="answer with one instance of this JSON Schema (response_format "
                        "json_schema): a .json file, or the schema itself")


def _params(args):
    from .sampling import SamplingParams

    fmt = {"type": "json_object"} if args.json else None
    if args.schema:
        fmt = {"type": "json_schema", "json_schema": {"name": "cli", "schema": _schema(args.schema)}}
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                          seed=args.seed, stop=args.stop, response_format=fmt)


def _schema(text: str) -> dict:
    """--schema: inline JSON (it starts with "{"), else a file holding it."""
    import json
    from pathlib import Path

    where = "--schema"
    if not text.lstrip().startswith("{"):
        where, text = text, Path(text).read_text()
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where} is not JSON: {err}") from None


def cuda_problem() -> str | None:
    """Why the cuda target cannot run on this machine (None: it can). Checked before a
    model loads, so `--target cuda` without a GPU fails in one line, not deep in torch."""
    import importlib.util

    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append(f"torch {torch.__version__} is a CPU-only build" if torch.version.cuda
                       is None else f"torch {torch.__version__} sees no CUDA GPU")
    if importlib.util.find_spec("triton") is None:
        missing.append("triton is not installed")
    if not missing:
        return None
    return ("the cuda target needs an NVIDIA GPU visible to torch, and triton (here "
            f"{' and '.join(missing)}); use --target cpu")


def _load(args, **llm_kwargs):
    """The LLM the model arguments describe, after refusing options its target ignores."""
    from .llm import LLM

    target, options = _target_options(args)
    llm_kwargs.setdefault("max_model_len", args.max_model_len)
    return LLM(model=args.model, target=target, spec=args.spec, **llm_kwargs, **options)


def _target_options(args) -> tuple[str, dict]:
    """The target and its options, or a ValueError naming the option or target to change."""
    from .targets import resolve_target

    target = resolve_target(args.target)
    if target != "cpu" and (args.quant not in (None, "none") or args.threads):
        raise ValueError(f"--quant and --threads apply to --target cpu (this run: {target})")
    # an explicit --quant none stays (the cpu target's default may pick int4 for a model
    # whose float32 weights would not fit in memory)
    options = {k: v for k, v in (("quant", args.quant), ("threads", args.threads))
               if v and target == "cpu"}
    if target == "cuda" and (problem := cuda_problem()):
        raise ValueError(problem)
    return target, options


def _no_tokenizer(args) -> int | None:
    """Exit status 2 and one line when --model has no tokenizer, checked before the model
    loads and compiles (headers only), so the user does not wait to be told."""
    from .checkpoint import open_checkpoint
    from .llm import no_tokenizer_message
    from .model_resolver import resolve_model

    _target_options(args)  # a target this machine cannot run is said first
    with open_checkpoint(resolve_model(args.model)) as ckpt:
        problem = no_tokenizer_message(ckpt)
    if problem is None:
        return None
    print(f"error: {problem}. Without one, the Python API takes token ids "
          "(LLM.generate([[1, 2, 3]]))", file=sys.stderr)
    return 2


def cmd_generate(args) -> int:
    params = _params(args)              # a bad option or schema is said before the model loads
    if (status := _no_tokenizer(args)) is not None:
        return status
    llm = _load(args)
    if args.raw:
        ids = llm.tokenizer.encode(args.prompt)
    else:
        ids = llm.tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    for piece in llm.stream_text(ids, params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    _params(args)                       # a bad option or schema is said before the model loads
    if (status := _no_tokenizer(args)) is not None:
        return status
    llm = _load(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    llm.tokenizer.apply_chat_template(messages + [{"role": "user", "content": "x"}])  # no template: say so now
    print("Chatting with", llm.model_path.name, "- /reset clears the history, /exit or Ctrl-D "
          "quits.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = llm.tokenizer.encode_chat(messages)
        reply = ""
        try:
            for piece in llm.stream_text(ids, _params(args)):
                reply += piece
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as err:       # e.g. the conversation outgrew the context
            print(f"\nerror: {err}", file=sys.stderr)
            messages.pop()
            continue
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


def cmd_bench(args) -> int:
    from .bench_cmd import bench
    from .targets import describe

    batches = tuple(int(b) for b in args.batch.split(",") if b.strip()) if args.batch else ()
    llm = _load(args, max_model_len=args.max_model_len or args.prompt_tokens + args.new_tokens + 16,
                max_num_seqs=max((1, *batches)))
    print(f"{llm.model_path.name} on {describe(llm.executor)} (loaded in "
          f"{llm.load_seconds:.1f} s)")
    for line in bench(llm, args.prompt_tokens, args.new_tokens, batches):
        print(line, flush=True)
    return 0


def cmd_inspect(args) -> int:
    folder = Path(args.dir)
    report = folder / "report.txt"
    if not report.exists():
        print(f"error: {folder} holds no compile output (report.txt); run "
              "`rustinfer-compile SPEC --model M --out DIR` first", file=sys.stderr)
        return 2
    wanted = [name for name, flag in (("memory.txt", args.memory), ("plan.py", args.plan)) if flag]
    if wanted and not (folder / "plan.py").exists() and (folder / "model.onnx").exists():
        # rustinfer-compile --target cpu writes an ONNX model, not plan.py + memory.txt
        print(f"error: {folder} holds a --target cpu (ONNX) compile: --plan and --memory apply "
              "to plan.py targets (--target cpu-torch or cuda); here see "
              f"{folder / 'graph.txt'} (the ONNX graph, node by node; graph_decode_long.txt for "
              "decode at long contexts) and "
              f"{folder / 'weights.txt'} (each weight's storage and quantization)",
              file=sys.stderr)
        return 2
    missing = [name for name in wanted if not (folder / name).exists()]
    if missing:
        print(f"error: {folder} has no {' or '.join(missing)}; recompile it with "
              "`rustinfer-compile SPEC --model M --out DIR`", file=sys.stderr)
        return 2
    shown = {}
    for name in ("report.txt", *wanted):
        text = shown[name] = (folder / name).read_text()
        if name == "plan.py":
            # plan.py's docstring repeats the report's header and memory.txt (codegen's
            # MEMORY_HEADING section): print each once
            import re

            header = shown["report.txt"].split("\n\n")[0].strip("\n")
            if "\n" in header and header in text:
                text = text.replace(header, "(spec, model, target, passes, memory: the report "
                                    "above)", 1)
            if "memory.txt" in shown:
                text = re.sub(r'(?ms)^Memory plan \(as in memory\.txt\):\n.*?(?=^""")',
                              "Memory plan: memory.txt, above.\n", text, count=1)
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rustinfer", description="Run LLMs from YAML specs.",
        epilog="`rustinfer COMMAND --help` lists a command's options. ./run.sh with no "
               "arguments runs `rustinfer serve`; rustinfer-compile compiles a spec.")
    sub = parser.add_subparsers(dest="command", required=True)

    # Parsed by rustinfer-serve itself (main() hands it the arguments); listed here for --help.
    serve = sub.add_parser("serve", add_help=False,
                           help="serve a model: OpenAI API + chat page on http://127.0.0.1:8000 "
                                "(the same as rustinfer-serve; see `rustinfer serve --help`)")
    serve.set_defaults(func=lambda args: _serve([]))

    gen = sub.add_parser("generate", help="answer one prompt, streaming the text",
                         description="Answer one prompt, streaming the text. Instruct models "
                         "get the prompt through their chat template unless --raw is given.")
    gen.add_argument("prompt")
    gen.add_argument("--raw", action="store_true",
                     help="complete the prompt as plain text, without the chat template")
    _add_model_args(gen)
    _add_sampling_args(gen, max_tokens=128)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat in the terminal")
    chat.add_argument("--system", help="system prompt")
    _add_model_args(chat)
    _add_sampling_args(chat, max_tokens=512)
    chat.set_defaults(func=cmd_chat)

    bench = sub.add_parser("bench", help="prefill and decode speed on this machine",
                           description="Prefill and decode tokens/s through the engine (random "
                           "token ids, greedy), one request and batches of requests.")
    _add_model_args(bench)
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=64)
    bench.add_argument("--batch", default="4,16",
                       help="comma-separated batch sizes to measure too (default 4,16; '' none)")
    bench.set_defaults(func=cmd_bench)

    inspect = sub.add_parser("inspect", help="print the report of a rustinfer-compile output")
    inspect.add_argument("dir")
    inspect.add_argument("--memory", action="store_true", help="also print the slot table")
    inspect.add_argument("--plan", action="store_true", help="also print plan.py")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def _serve(argv: list[str]) -> int:
    from rustinfer.server.cli import serve_main

    return serve_main(argv, prog="rustinfer serve")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return _serve(argv[1:])
    args = build_parser().parse_args(argv)
    from rustinfer.compiler.errors import SpecError

    from .checkpoint import CheckpointError

    try:
        return args.func(args)
    except (SpecError, CheckpointError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
