"""How many threads a CPU target should use by default."""
from __future__ import annotations

import os
from pathlib import Path


def physical_cores() -> int:
    """ONNX Runtime's default thread count: the physical cores this process may run on.

    Hyperthreads share a core's vector units, so a thread per logical CPU is slower for
    matmuls; a container's CPU affinity may allow fewer CPUs than the machine has."""
    logical = os.cpu_count() or 1
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = cpuinfo_cores(Path("/proc/cpuinfo"))
    if physical and logical > physical:            # SMT: keep one thread per core
        allowed = allowed * physical // logical
    return max(1, allowed)


def cpuinfo_cores(path: Path) -> int | None:
    """Distinct (physical id, core id) pairs in a Linux /proc/cpuinfo; None if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    cores = set()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) or None
