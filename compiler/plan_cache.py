"""The compile cache's size limit: the least recently used folders go first.

Every compiler change gives new cache keys (the key hashes the compiler's source),
and a float32 ONNX folder holds a whole copy of the weights (540 MB for
SmolLM2-135M), so without a limit $RUSTINFER_CACHE/plans only grows. After every
compile or cache hit, `mark_used(folder)` stamps the folder as just used and then
removes other folders, oldest use first, until the cache fits in
$RUSTINFER_PLAN_CACHE_GB (default 10). It never removes the folder being used, nor
a build in progress (`<name>.<random>` temporary folders), nor anything else there. A folder removed while
another process runs from it stays readable to that process (Linux keeps open and
mapped files until they are closed).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

DEFAULT_LIMIT_GB = 10.0
_FINISHED = re.compile(r"-[0-9a-f]{16}$")     # <family>-<target>[-<quant>]-<key>; builds in
                                             # progress are <that>.<random>


def limit_bytes() -> float:
    value = os.environ.get("RUSTINFER_PLAN_CACHE_GB", "")
    try:
        return float(value) * 2**30 if value else DEFAULT_LIMIT_GB * 2**30
    except ValueError:
        raise ValueError(f"RUSTINFER_PLAN_CACHE_GB must be a number of GiB, got {value!r}")


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:             # removed meanwhile by another process
                pass
    return total


def mark_used(folder: Path) -> list[Path]:
    """Stamp `folder` as used now; evict least recently used others past the limit.
    Returns the folders removed."""
    now = time.time()
    try:
        os.utime(folder, (now, now))
    except OSError:
        return []
    others = []
    for entry in folder.parent.iterdir():
        if entry == folder or not entry.is_dir() or not _FINISHED.search(entry.name):
            continue
        try:
            others.append((entry.stat().st_mtime, folder_bytes(entry), entry))
        except OSError:
            continue
    total = folder_bytes(folder) + sum(size for _, size, _ in others)
    removed = []
    for _, size, entry in sorted(others):                # least recently used first
        if total <= limit_bytes():
            break
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed
