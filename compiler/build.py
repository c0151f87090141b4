"""compile_model: spec + checkpoint -> a compile folder (plan.py, dumps, memory plan, report).

The folder is cached under $RUSTINFER_CACHE/plans, keyed by everything that
changes its content: the spec text, the checkpoint's config and weight shapes,
the options, and the compiler's own source. A second start finds it and skips
compilation; plan_cache.py keeps the cache under a size limit.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .bind import bind
from .codegen import generate_plan
from .memory_plan import plan_memory
from .pipeline import run_pipeline
from .plan_cache import mark_used
from .spec import load_spec

_SOURCE_DIRS = [Path(__file__).resolve().parent,
                Path(__file__).resolve().parent.parent / "kernels"]


@dataclass(frozen=True)
class CompileOptions:
    target: str = "cpu-torch"
    max_tokens: int = 2048       # largest step the arena is planned for
    max_seqs: int = 256
    plan_memory: bool = True     # False: one buffer per value (for bisecting)
    verify: bool = True          # run the IR verifier after every pass
    disable: tuple[str, ...] = ()   # passes to skip (benchmarks compare plans with and without)


def cache_root() -> Path:
    return Path(os.environ.get("RUSTINFER_CACHE", Path.home() / ".cache" / "rustinfer")) / "plans"


def cache_key(spec_text: str, config: dict, shapes: dict, options: CompileOptions) -> str:
    h = hashlib.sha256()
    for part in (spec_text, json.dumps(config, sort_keys=True, default=str),
                 json.dumps(sorted((k, list(v)) for k, v in shapes.items())),
                 json.dumps(asdict(options), sort_keys=True)):
        h.update(part.encode())
    for folder in _SOURCE_DIRS:        # a compiler change invalidates every cached plan
        for f in sorted(folder.rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def compile_model(spec_path: str | Path, config: dict, checkpoint=None,
                  options: CompileOptions = CompileOptions(), out_dir: str | Path | None = None,
                  use_cache: bool = True) -> tuple[Path, bool]:
    """Compile (or find in the cache); returns (folder, was_cached).

    With `out_dir`, the result is (also) copied there for people to read.
    """
    spec = load_spec(spec_path)
    spec_text = Path(spec_path).read_text() if Path(spec_path).exists() else spec.file
    shapes = {n: checkpoint.shape(n) for n in checkpoint.names()} if checkpoint else {}
    key = cache_key(spec_text, config, shapes, options)
    cached = cache_root() / f"{spec.family}-{options.target}-{key}"
    hit = use_cache and (cached / "plan.py").exists()
    if not hit:
        _build(spec, config, checkpoint, options, cached)
    mark_used(cached)
    if out_dir is not None and Path(out_dir).resolve() != cached.resolve():
        out = Path(out_dir)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(cached, out)
    return cached, hit


def _build(spec, config, checkpoint, options: CompileOptions, folder: Path) -> None:
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    graph = bind(spec, config, checkpoint)
    bound = time.perf_counter()
    fused, passes = run_pipeline(graph, verify=options.verify, dump_dir=tmp / "passes",
                                  target=options.target, disable=options.disable)
    memory = plan_memory(fused, max_tokens=options.max_tokens, max_seqs=options.max_seqs,
                         enabled=options.plan_memory)
    header = _header(spec, config, options, passes, memory)
    source = generate_plan(fused, memory, target=options.target,
                           max_tokens=options.max_tokens, header=header)
    (tmp / "plan.py").write_text(source)
    (tmp / "memory.json").write_text(json.dumps(memory.to_json(), indent=1))
    (tmp / "memory.txt").write_text(memory.summary() + "\n\n" + memory.table() + "\n")
    done = time.perf_counter()
    report = "\n".join([
        header,
        "",
        f"compile time  {1000 * (done - started):.0f} ms (bind {1000 * (bound - started):.0f} ms, "
        f"passes {1000 * passes.seconds:.0f} ms)",
        "files         plan.py, memory.txt, memory.json, passes/NN-<pass>.txt",
    ])
    (tmp / "report.txt").write_text(report + "\n")
    if folder.exists():                 # another process won the race: keep theirs
        shutil.rmtree(tmp)
        return
    os.replace(tmp, folder)


def about_lines(spec_file: str, family: str, config: dict) -> list[str]:
    """The spec and model lines every target's report starts with."""
    model = config.get("_name_or_path") or (config.get("architectures") or ["?"])[0]
    return [f"spec          {spec_file} (family {family})",
            f"model         {model}, {config.get('num_hidden_layers', '?')} layers, hidden "
            f"{config.get('hidden_size', '?')}"]


def _header(spec, config, options, passes, memory) -> str:
    fusions = ", ".join(f"{name} x{count}" for name, count in passes.rewrites.items() if count)
    return "\n".join([
        *about_lines(spec.file, spec.family, config),
        f"target        {options.target}, max {options.max_tokens} tokens per step",
        f"passes        {fusions}",
        f"memory        naive {memory.naive_bytes / 2**20:.1f} MiB -> planned "
        f"{memory.arena_bytes / 2**20:.1f} MiB ({100 * memory.arena_bytes / max(memory.naive_bytes, 1):.1f}%), "
        f"lower bound {memory.peak_live_bytes / 2**20:.1f} MiB"
        + ("" if options.plan_memory else " [planning OFF]"),
    ])
