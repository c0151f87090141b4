"""`rustinfer-compile SPEC --model M --out DIR`: validate and bind a spec, write what it became."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .errors import SpecError

DEFAULT_MAX_TOKENS = 2048


def _model_source(model: str | None):
    """(config, checkpoint-or-None, description) for --model.

    A folder holding only config.json binds without weights (shapes unchecked),
    so specs can be compiled for published configs before downloading weights.
    """
    from rustinfer.runtime.checkpoint import open_checkpoint
    from rustinfer.runtime.model_resolver import resolve_model

    path = resolve_model(model)
    if path.is_dir() and (path / "config.json").exists() and not any(path.glob("*.safetensors")):
        return json.loads((path / "config.json").read_text()), None, f"{path} (config only)"
    ckpt = open_checkpoint(path)
    return ckpt.config, ckpt, str(path)


PLAN_TARGETS = ("cpu-torch", "cuda")   # the targets that write plan.py + a memory plan


def check_options(args) -> None:
    """Refuse options the chosen target would silently ignore (as `rustinfer generate` does):
    --quant lowers weights for ONNX Runtime (cpu only); --max-tokens, --no-memory-plan and
    --no-verify shape plan.py (cpu-torch, cuda), which the cpu target does not write."""
    if args.target != "cpu" and args.quant != "none":
        raise ValueError(f"--quant applies to --target cpu (this run: {args.target}); add "
                         "--target cpu to compile an ONNX model with quantized weights")
    if args.target not in PLAN_TARGETS:
        given = [flag for flag, value in (("--max-tokens", args.max_tokens is not None),
                                          ("--no-memory-plan", args.no_memory_plan),
                                          ("--no-verify", args.no_verify)) if value]
        if given:
            raise ValueError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                             f"the plan.py targets ({', '.join(PLAN_TARGETS)}); "
                             f"--target {args.target} writes an ONNX model")


def compile_command(args) -> int:
    from .bind import select_spec
    from .build import CompileOptions, compile_model

    check_options(args)
    started = time.perf_counter()
    config, ckpt, described = _model_source(args.model)
    spec_file = args.spec or select_spec(config)
    if args.target == "cpu":
        return _compile_onnx(args, config, ckpt, described, spec_file, started)
    max_tokens = DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens
    options = CompileOptions(target=args.target, max_tokens=max_tokens,
                             plan_memory=not args.no_memory_plan, verify=not args.no_verify)
    folder, cached = compile_model(spec_file, config, ckpt, options, out_dir=args.out,
                                   use_cache=not args.force)
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    if args.dump:
        shutil.copytree(out / "passes", args.dump, dirs_exist_ok=True)
    _print_report(out)
    print(f"checkpoint    {described}")
    print(f"{'cache hit' if cached else 'compiled':<14}{folder} ({elapsed * 1000:.0f} ms in all)")
    print(f"wrote         {out}/plan.py, report.txt, memory.txt, memory.json, passes/")
    return 0


def _print_report(out: Path) -> None:
    text = (out / "report.txt").read_text()
    print(text, end="" if text.endswith("\n") else "\n")


def _compile_onnx(args, config, ckpt, described, spec_file, started) -> int:
    """The ONNX Runtime target: model.onnx + weights.bin (hard-linked into --out when the
    cache is on the same file system; ONNX Runtime refuses external data behind a symlink)."""
    from .bind import bind
    from .onnx_build import OnnxOptions, compile_onnx
    from .spec import load_spec

    if ckpt is None:
        raise ValueError("the cpu target embeds the weights: give --model a checkpoint "
                         "(a Hugging Face folder with weights, a .gguf file or an alias)")
    graph = bind(load_spec(spec_file), config, ckpt)
    folder, cached = compile_onnx(graph, spec_file, config, ckpt,
                                  OnnxOptions(quant=args.quant), use_cache=not args.force)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("weights.bin"))
    try:
        os.link(folder / "weights.bin", out / "weights.bin")
    except OSError:
        shutil.copy2(folder / "weights.bin", out / "weights.bin")
    if args.dump:
        shutil.copytree(out / "passes", args.dump, dirs_exist_ok=True)
    _print_report(out)
    print(f"checkpoint    {described}")
    print(f"{'cache hit' if cached else 'compiled':<14}{folder} "
          f"({(time.perf_counter() - started) * 1000:.0f} ms in all)")
    print(f"wrote         {out}/model.onnx, decode_long.onnx, weights.bin, graph.txt, "
          "graph_decode_long.txt, weights.txt, report.txt, passes/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rustinfer-compile",
        description="Compile a model spec for a checkpoint: bind it, run the fusion passes, "
                    "plan the workspace and write plan.py, per-pass IR dumps, the memory plan "
                    "and a report into --out. Plans are cached in $RUSTINFER_CACHE/plans.")
    p.add_argument("spec", nargs="?", help="spec file or family name (default: chosen from "
                   "the model's config.json), e.g. specs/llama3.yaml")
    p.add_argument("--model", help="Hugging Face folder, .gguf file or alias "
                   "(default: smollm2-135m-instruct)")
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
    p.add_argument("--target", default="cpu-torch", choices=["cpu-torch", "cpu", "cuda"],
                   help="cpu-torch: plan.py on torch kernels (default); cpu: an ONNX model "
                        "for ONNX Runtime's CPU contrib ops; cuda: plan.py on Triton kernels "
                        "(norms, residual adds and SwiGLU fused into the GEMMs; compiles "
                        "without a GPU)")
    p.add_argument("--quant", default="none", choices=["none", "int4", "int8"],
                   help="cpu target: weight quantization (default none = float32)")
    p.add_argument("--max-tokens", type=int,
                   help=f"cpu-torch and cuda targets: largest step (tokens) the workspace is "
                        f"planned for (default {DEFAULT_MAX_TOKENS})")
    p.add_argument("--no-memory-plan", action="store_true",
                   help="cpu-torch and cuda targets: give every value its own buffer (to "
                        "bisect a planning bug)")
    p.add_argument("--no-verify", action="store_true",
                   help="cpu-torch and cuda targets: skip the IR verifier between passes")
    p.add_argument("--force", action="store_true", help="recompile even if a cached plan exists")
    p.add_argument("--dump", metavar="DIR", help="also copy the IR after each pass "
                   "(00-parsed.txt, 01-fuse_qkv.txt, ...) into DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    from rustinfer.runtime.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return compile_command(args)
    except (SpecError, CheckpointError, ValueError, OSError) as err:
        # the user's to fix (a bad --model, spec or option): one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
