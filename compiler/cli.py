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


def compile_command(args) -> int:
    from .bind import select_spec
    from .build import CompileOptions, compile_model

    started = time.perf_counter()
    config, ckpt, described = _model_source(args.model)
    spec_file = args.spec or select_spec(config)
    if args.target == "cpu":
        return _compile_onnx(args, config, ckpt, described, spec_file, started)
    options = CompileOptions(target=args.target, max_tokens=args.max_tokens,
                             plan_memory=not args.no_memory_plan, verify=not args.no_verify)
    folder, cached = compile_model(spec_file, config, ckpt, options, out_dir=args.out,
                                   use_cache=not args.force)
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    if args.dump:
        shutil.copytree(out / "passes", args.dump, dirs_exist_ok=True)
    print((out / "report.txt").read_text(), end="")
    print(f"model         {described}")
    print(f"{'cache hit' if cached else 'compiled'}     {folder} ({elapsed * 1000:.0f} ms in all)")
    print(f"wrote         {out}/plan.py, report.txt, memory.txt, memory.json, passes/")
    return 0


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
    print((out / "report.txt").read_text(), end="")
    print(f"model         {described}")
    print(f"{'cache hit' if cached else 'compiled'}     {folder} "
          f"({(time.perf_counter() - started) * 1000:.0f} ms in all)")
    print(f"wrote         {out}/model.onnx, weights.bin, graph.txt, "
          "weights.txt, report.txt, passes/")
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
    p.add_argument("--max-tokens", type=int, default=2048,
                   help="largest step (tokens) the workspace is planned for (default 2048)")
    p.add_argument("--no-memory-plan", action="store_true",
                   help="give every value its own buffer (to bisect a planning bug)")
    p.add_argument("--no-verify", action="store_true", help="skip the IR verifier between passes")
    p.add_argument("--force", action="store_true", help="recompile even if a cached plan exists")
    p.add_argument("--dump", metavar="DIR", help="also copy the IR after each pass "
                   "(00-parsed.txt, 01-fuse_qkv.txt, ...) into DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return compile_command(args)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
