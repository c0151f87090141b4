"""`rustinfer-compile SPEC --model M --out DIR`: validate and bind a spec, write what it became."""
from __future__ import annotations

import argparse
import json
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
    from .bind import bind, select_spec
    from .spec import load_spec

    started = time.perf_counter()
    config, ckpt, described = _model_source(args.model)
    spec = load_spec(args.spec or select_spec(config))
    graph = bind(spec, config, ckpt)
    elapsed = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "00-parsed.txt").write_text(graph.to_text())
    counts: dict[str, int] = {}
    for node in graph.nodes:
        counts[node.op] = counts.get(node.op, 0) + 1
    weight_bytes = sum(4 * _numel(v.shape) for v in graph.weights())
    lines = [
        f"spec        {spec.file} (family {spec.family})",
        f"model       {described}",
        f"weights     {'checked against the checkpoint' if ckpt else 'not checked (no checkpoint)'}",
        f"layers      {graph.symbols.get('n_layers', '?')}",
        f"nodes       {len(graph.nodes)}  ({', '.join(f'{k} {v}' for k, v in counts.items())})",
        f"weights     {len(graph.weights())} tensors, {weight_bytes / 2**20:.1f} MiB as float32",
        f"kv caches   {len(graph.caches())}",
        f"symbols     {', '.join(f'{k}={v}' for k, v in graph.symbols.items() if not isinstance(v, dict))}",
        f"time        {elapsed * 1000:.0f} ms",
    ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/00-parsed.txt and {out}/summary.txt")
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rustinfer-compile",
        description="Validate a model spec, bind it to a checkpoint's config and weights, "
                    "and write the resulting IR and a summary.")
    p.add_argument("spec", nargs="?", help="spec file or family name (default: chosen from "
                   "the model's config.json), e.g. specs/llama3.yaml")
    p.add_argument("--model", help="Hugging Face folder, .gguf file or alias "
                   "(default: smollm2-135m-instruct)")
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
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
