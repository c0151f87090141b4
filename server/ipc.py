"""Where the engine's socket lives: an ipc:// path inside a private 0700 directory.

The engine never binds TCP: a Unix socket in a directory only its user can
enter means no other local user can submit work or read outputs, and nothing
is exposed on the network. ZeroMQ's ipc transport removes a stale socket file
when it binds, so before binding we check that no live engine is behind it.
"""
from __future__ import annotations

import os
import socket
import stat
import tempfile
from pathlib import Path

SOCKET_NAME = "engine.sock"


def default_socket_dir() -> Path:
    """$XDG_RUNTIME_DIR/rustinfer, else <tmp>/rustinfer-<uid>: where a standalone
    `rustinfer-engine` binds and a standalone `rustinfer-server` looks by default."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "rustinfer"
    return Path(tempfile.gettempdir()) / f"rustinfer-{os.getuid()}"


def private_dir(path: str | Path) -> Path:
    """Create `path` as a 0700 directory, or check that an existing one is ours and private."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} is not a directory (a symlink?): refusing to put the "
                              "engine socket there")
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us: refusing to put "
                              "the engine socket there")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours but too open (e.g. an old umask): tighten it
    return path


def make_private_tempdir() -> Path:
    """A fresh private directory (mkdtemp makes it 0700) for one `rustinfer-serve`."""
    return Path(tempfile.mkdtemp(prefix="rustinfer-"))


def address_for(directory: str | Path) -> str:
    return f"ipc://{Path(directory) / SOCKET_NAME}"


def socket_path(address: str) -> Path:
    if not address.startswith("ipc://"):
        raise ValueError(f"engine address {address!r}: only ipc:// addresses are supported "
                         "(the engine never listens on TCP)")
    return Path(address[len("ipc://"):])


def socket_in_use(path: Path) -> bool:
    """True when a live process accepts connections on the Unix socket `path`."""
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
