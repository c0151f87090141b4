"""The build: one ordered list of named passes, verified after each.

    PASSES = fuse_qkv -> fuse_gate_up_swiglu -> fuse_rope_kv -> fuse_add_rms_norm
             -> lm_head_last_token -> dead_value_removal -> fuse_norm_linear (cuda only)

Each pass is a pure function `run(graph) -> (graph, rewrites)` in
`passes/<name>.py`; a pass that depends on another says so in its docstring.
`run_pipeline` runs them in order, checks the IR with `verify.verify` after
the parsed graph and after every pass, and can dump the graph as text between
passes (`00-parsed.txt`, `01-fuse_qkv.txt`, ...). A disabled pass keeps its
number (no file is written for it), so `03-fuse_rope_kv.txt` always means the
same stage. TARGET_PASSES names the passes that run only for some targets
(a pass for another target counts as disabled).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import nearest
from .ir import Graph
from .passes import (dead_value_removal, fuse_add_rms_norm, fuse_gate_up_swiglu,
                     fuse_norm_linear, fuse_qkv, fuse_rope_kv, lm_head_last_token)
from .verify import verify as verify_graph

PassFn = Callable[[Graph], "tuple[Graph, int]"]

PASSES: list[tuple[str, PassFn]] = [
    ("fuse_qkv", fuse_qkv.run),
    ("fuse_gate_up_swiglu", fuse_gate_up_swiglu.run),
    ("fuse_rope_kv", fuse_rope_kv.run),
    ("fuse_add_rms_norm", fuse_add_rms_norm.run),
    ("lm_head_last_token", lm_head_last_token.run),
    ("dead_value_removal", dead_value_removal.run),   # removes what fusions left behind
    # After it, so the other targets' dumps keep their numbers; its rewrites leave
    # nothing dead (each drops the values it replaces).
    ("fuse_norm_linear", fuse_norm_linear.run),
]

# Passes that only some targets run: fuse_norm_linear's fused GEMVs exist only as
# Triton kernels (the ONNX lowering and the CPU ops keep the separate ops).
TARGET_PASSES: dict[str, tuple[str, ...]] = {"fuse_norm_linear": ("cuda",)}
KNOWN_TARGETS = ("cpu-torch", "cpu", "cuda", "reference")


@dataclass
class PassRecord:
    name: str
    rewrites: int
    seconds: float           # the pass itself, not the verifier
    nodes_before: int
    nodes_after: int
    disabled: bool = False


@dataclass
class PipelineReport:
    passes: list[PassRecord] = field(default_factory=list)
    verify_seconds: float = 0.0

    @property
    def rewrites(self) -> dict[str, int]:
        """{pass name: rewrites} for the passes that ran, in order."""
        return {p.name: p.rewrites for p in self.passes if not p.disabled}

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.passes)

    def to_text(self) -> str:
        lines = [f"{'pass':<22} {'rewrites':>8} {'nodes':>11} {'ms':>8}"]
        for p in self.passes:
            if p.disabled:
                lines.append(f"{p.name:<22} {'disabled':>8}")
                continue
            nodes = f"{p.nodes_before}->{p.nodes_after}"
            lines.append(f"{p.name:<22} {p.rewrites:>8} {nodes:>11} {p.seconds * 1e3:>8.1f}")
        lines.append(f"{'total':<22} {sum(self.rewrites.values()):>8} {'':>11} "
                     f"{self.seconds * 1e3:>8.1f}  (+{self.verify_seconds * 1e3:.1f} ms verify)")
        return "\n".join(lines) + "\n"


def run_pipeline(graph: Graph, *, verify: bool = True, dump_dir: str | Path | None = None,
                 disable: tuple[str, ...] | list[str] = (),
                 target: str = "cpu-torch") -> tuple[Graph, PipelineReport]:
    """Run PASSES (minus `disable`, and minus the TARGET_PASSES of other targets) on a
    copy of `graph`; returns (graph, report).

    verify: run `verify.verify` on the input and after every pass (raises
    VerifyError naming the pass). dump_dir: write `NN-<pass>.txt` per stage.
    """
    known = [name for name, _ in PASSES]
    for name in disable:
        if name not in known:
            hint = nearest(name, known)
            raise ValueError(f"unknown pass '{name}' in disable (passes: {', '.join(known)})"
                             + (f"; did you mean '{hint[0]}'?" if hint else ""))
    if target not in KNOWN_TARGETS:
        raise ValueError(f"unknown target '{target}' (targets: {', '.join(KNOWN_TARGETS)})")
    disable = set(disable) | {name for name, targets in TARGET_PASSES.items()
                              if target not in targets}
    out = Path(dump_dir) if dump_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report = PipelineReport()
    graph = graph.clone()
    _check(graph, verify, "parsed", report)
    if out is not None:
        (out / "00-parsed.txt").write_text(graph.to_text())
    for index, (name, fn) in enumerate(PASSES, start=1):
        before = len(graph.nodes)
        if name in disable:
            report.passes.append(PassRecord(name, 0, 0.0, before, before, disabled=True))
            continue
        started = time.perf_counter()
        graph, rewrites = fn(graph)
        elapsed = time.perf_counter() - started
        report.passes.append(PassRecord(name, rewrites, elapsed, before, len(graph.nodes)))
        _check(graph, verify, name, report)
        if out is not None:
            (out / f"{index:02d}-{name}.txt").write_text(graph.to_text())
    return graph, report


def _check(graph: Graph, enabled: bool, after: str, report: PipelineReport) -> None:
    if enabled:
        started = time.perf_counter()
        verify_graph(graph, after=after)
        report.verify_seconds += time.perf_counter() - started
