"""How much memory this machine can still give (the cpu target's choices depend on it)."""
from __future__ import annotations

from pathlib import Path


def available_memory() -> int | None:
    """Bytes of memory the kernel says a new allocation can get (MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
