"""The compile cache stays under its size limit: least recently used folders go first."""
import os

from rustinfer.compiler.plan_cache import mark_used


def make(root, name, size, age):
    folder = root / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\0" * size)
    t = 1_000_000 + age
    os.utime(folder, (t, t))
    return folder


def test_least_recently_used_go_first_never_the_current_or_a_build(tmp_path, monkeypatch):
    monkeypatch.setenv("RUSTINFER_PLAN_CACHE_GB", str(2000 / 2**30))      # 2000 bytes
    old = make(tmp_path, "llama3-cpu-none-" + "a" * 16, 1000, age=1)
    mid = make(tmp_path, "llama3-cpu-torch-" + "b" * 16, 1000, age=2)
    new = make(tmp_path, "qwen2-cpu-int4-" + "c" * 16, 1000, age=3)
    building = make(tmp_path, "llama3-cpu-none-" + "d" * 16 + ".x1y2z3", 1000, age=0)
    other = make(tmp_path, "notes", 1000, age=0)                           # not ours
    current = make(tmp_path, "llama3-cpu-none-" + "e" * 16, 500, age=0)    # oldest stamp, in use
    removed = mark_used(current)
    # only finished cache folders count and may go: 3 x 1000 + 500 = 3500 bytes; without
    # the least recently used 2500, still > 2000; without the next 1500: fits
    assert removed == [old, mid]
    assert all(p.exists() for p in (new, building, other, current))
    assert current.stat().st_mtime > new.stat().st_mtime                  # stamped as just used


def test_under_the_limit_nothing_goes(tmp_path, monkeypatch):
    monkeypatch.delenv("RUSTINFER_PLAN_CACHE_GB", raising=False)          # default 10 GiB
    a = make(tmp_path, "llama3-cpu-none-" + "a" * 16, 100, age=1)
    b = make(tmp_path, "llama3-cpu-none-" + "b" * 16, 100, age=2)
    assert mark_used(b) == [] and a.exists()
