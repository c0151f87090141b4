"""compile_onnx: bound IR + checkpoint -> a cached folder holding model.onnx + weights.bin.

    $RUSTINFER_CACHE/plans/<family>-cpu-<quant>-<key>/
        model.onnx        the graph (weights referenced as external data)
        decode_long.onnx  the graph decode runs take at long contexts (attention read once
                          per KV head: see onnx_long_decode); the same weights.bin
        weights.bin       every large initializer, written once
        graph.txt         one line per ONNX node (hierarchical names); graph_decode_long.txt
        weights.txt       what each IR weight became (float32 MatMul, MatMulNBits, origin)
        passes/           the IR after each fusion pass (as compile_model writes them)
        meta.json         what the executor needs (caches, vocab, bytes read per token)
        report.txt        a short human summary

The key is build.cache_key's (spec text, config, weight shapes, compiler and
kernel sources) plus the ONNX options and the checkpoint's identity (path, file
sizes and mtimes): unlike plan.py, this folder embeds the weights.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from .build import CompileOptions, about_lines, cache_key, cache_root
from .ir import Graph
from .onnx_long_decode import long_decode_model
from .onnx_lowering import describe, lower
from .onnx_weights import WeightStore
from .pipeline import run_pipeline
from .plan_cache import mark_used


@dataclass(frozen=True)
class OnnxOptions:
    """NOTE accuracy_level, measured on SmolLM2 Q4_1, 2 threads (bench/cpu.py): 4 (int8
    activations per block of 32) decodes 6x faster than 0 (a 576 x 12288 int4 MatMulNBits:
    113 us vs 343 us; levels 1-3 take the float32 path too) at a cost of ~0.5% relative
    error per matmul: perplexity +0.08%, but greedy agreement with fp32 62% (level 0: 100%,
    the transcoded blocks are exact). Speed is the point of int4, so 4 is the default."""
    quant: str = "none"            # "none" (float32) | "int4" | "int8"
    accuracy_level: int = 4        # MatMulNBits: 4 = int8 activations (fast), 0 = float32
    quantize_lm_head: bool = True  # the LM head is the largest matrix: quantize it too


def checkpoint_identity(path) -> list:
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [str(p.resolve())] + [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def compile_onnx(graph: Graph, spec_path: str, config: dict, checkpoint,
                 options: OnnxOptions = OnnxOptions(), use_cache: bool = True
                 ) -> tuple[Path, bool]:
    """Lower (or find in the cache) the model; returns (folder, was_cached)."""
    spec_text = Path(spec_path).read_text() if Path(spec_path).exists() else str(spec_path)
    shapes = {n: checkpoint.shape(n) for n in checkpoint.names()}
    keyed = {"config": config, "onnx": asdict(options),
             "checkpoint": checkpoint_identity(checkpoint.path)}
    key = cache_key(spec_text, keyed, shapes, CompileOptions(target="cpu"))
    folder = cache_root() / f"{graph.family}-cpu-{options.quant}-{key}"
    hit = use_cache and (folder / "meta.json").exists()
    if not hit:
        # Say so: lowering writes the weights once more (float32: 4 bytes per parameter),
        # which takes a while for a large model on its first start.
        print(f"rustinfer: compiling {graph.family} for the cpu target (quant "
              f"{options.quant}); cached for the next start in {folder.parent}",
              file=sys.stderr, flush=True)
        _build(graph, checkpoint, options, folder, _about(spec_path, config, graph.family))
    mark_used(folder)
    return folder, hit


def _about(spec_file: str, config: dict, family: str) -> list[str]:
    """The spec and model lines plan targets' reports start with (build.about_lines)."""
    from .spec import display_name, spec_path

    try:
        spec = display_name(spec_path(spec_file))
    except Exception:  # a spec given as text: name it as given
        spec = str(spec_file)
    return about_lines(spec, family, config)


def _build(graph: Graph, checkpoint, options: OnnxOptions, folder: Path,
           about: list[str] = ()) -> None:
    """`about`: the report's first lines (spec, model), as plan targets' reports start."""
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        fused, passes = run_pipeline(graph, dump_dir=tmp / "passes")
        store = WeightStore(fused, checkpoint, tmp, quant=options.quant,
                            accuracy_level=options.accuracy_level,
                            quantize_lm_head=options.quantize_lm_head)
        try:
            model = lower(fused, store)
        finally:
            store.close()
        onnx.save_model(model, str(tmp / "model.onnx"))
        (tmp / "graph.txt").write_text(describe(model))
        long_model, long_inputs = long_decode_model(model)     # same weights.bin
        onnx.save_model(long_model, str(tmp / "decode_long.onnx"))
        (tmp / "graph_decode_long.txt").write_text(describe(long_model))
        (tmp / "weights.txt").write_text("\n".join(store.report) + "\n")
        caches = {c.name: list(c.shape[2:]) for c in fused.caches()}
        meta = {
            "caches": caches,
            "vocab": int(fused.values[fused.outputs[0]].shape[-1]),
            "uses_position_ids": any(i.name == "position_ids" for i in model.graph.input),
            "bytes_per_token": store.bytes_per_token,
            "quant": options.quant,
            "max_pos": int(fused.symbols.get("max_pos") or 8192),
            "long_decode": {"model": "decode_long.onnx", **long_inputs},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        seconds = time.perf_counter() - started
        ops: dict[str, int] = {}
        for node in model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        (tmp / "report.txt").write_text("\n".join([
            *about,
            f"target        cpu (ONNX Runtime), quant {options.quant}, "
            f"accuracy_level {options.accuracy_level}",
            "passes        " + ", ".join(f"{k} x{v}" for k, v in passes.rewrites.items() if v),
            f"onnx nodes    {len(model.graph.node)}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())),
            f"decode_long   {len(long_model.graph.node)} nodes: decode at long contexts, attention "
            "read once per KV head (onnx_long_decode.py)",
            f"weights       {(tmp / 'weights.bin').stat().st_size / 2**20:.1f} MiB in weights.bin; "
            f"{store.bytes_per_token / 2**20:.1f} MiB read per decoded token",
            f"compile time  {seconds * 1000:.0f} ms",
        ]) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():                  # another process won the race: keep theirs
        shutil.rmtree(tmp)
        return
    os.replace(tmp, folder)
