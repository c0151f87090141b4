"""The package installs under one namespace, editable (this venv) and as a normal wheel."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMPORTS = ("import rustinfer.compiler, rustinfer.runtime, rustinfer.kernels, rustinfer.server; "
           "from rustinfer.compiler.pipeline import run_pipeline; "
           "from rustinfer.compiler.spec import SPECS_DIR; "
           "assert (SPECS_DIR / 'llama3.yaml').exists(), SPECS_DIR; print('ok')")


def test_editable_install_imports_from_anywhere(tmp_path):
    out = subprocess.run([sys.executable, "-c", IMPORTS], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_wheel_installs_only_the_rustinfer_namespace_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("rustinfer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"rustinfer"}
    assert "rustinfer/specs/llama3.yaml" in names
    assert "rustinfer/compiler/interpreter.py" in names
    assert "rustinfer/compiler/passes/fuse_qkv.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S -I: no site-packages of the editable install; dependencies come via PYTHONPATH.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = f"import sys; sys.path[:0] = {[str(site)] + deps!r}; " + IMPORTS
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
