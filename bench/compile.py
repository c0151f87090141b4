"""Compile time and workspace size for the default model and the Llama 3.x configs.

    .venv/bin/python bench/compile.py [--max-tokens 2048]

For each model: a cold compile (fresh cache), a warm start (cache hit), and
the memory plan: naive bytes (one buffer per value) vs planned arena vs the
lower bound (peak live bytes). Ratio = planned / naive.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(name: str, model: str, max_tokens: int) -> None:
    from rustinfer.compiler.bind import select_spec
    from rustinfer.compiler.build import CompileOptions, compile_model
    from rustinfer.compiler.cli import _model_source

    config, ckpt, _ = _model_source(model)
    spec = select_spec(config)
    options = CompileOptions(max_tokens=max_tokens)
    t0 = time.perf_counter()
    folder, hit1 = compile_model(spec, config, ckpt, options)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, hit2 = compile_model(spec, config, ckpt, options)
    warm = time.perf_counter() - t0
    mem = json.loads((folder / "memory.json").read_text())
    mib = 2 ** 20
    print(f"{name:<24} cold {cold * 1e3:7.0f} ms (hit={hit1})  warm {warm * 1e3:5.0f} ms "
          f"(hit={hit2})  naive {mem['naive_bytes'] / mib:8.1f} MiB  planned "
          f"{mem['planned_bytes'] / mib:7.1f} MiB  bound {mem['peak_live_bytes'] / mib:7.1f} MiB  "
          f"ratio {mem['planned_bytes'] / mem['naive_bytes']:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=2048)
    args = p.parse_args()
    from rustinfer.runtime.model_resolver import resolve_model

    # The default model is fetched (once) outside the timing; Llama configs bind without weights.
    models = [("smollm2-135m-instruct", str(resolve_model(None)))]
    for m in ("llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct"):
        models.append((m + " (config)", str(REPO / "bench" / "models" / m)))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RUSTINFER_CACHE"] = cache   # a cold plan cache for this run
        for name, model in models:
            measure(name, model, args.max_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
