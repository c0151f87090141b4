"""An ONNX Runtime session with its IO binding, rebinding only what changed."""
from __future__ import annotations

import numpy as np


class BoundSession:
    """An ONNX Runtime session and its IO binding; a name is rebound only when its pointer
    or shape changed, and `key` lets a run skip binding altogether when nothing did."""

    def __init__(self, session):
        self.session, self.binding = session, session.io_binding()
        self.bound: dict[str, tuple] = {}
        self.key: tuple | None = None

    def bind(self, name: str, array: np.ndarray, shape, output: bool = False) -> None:
        key = (array.ctypes.data, tuple(shape))
        if self.bound.get(name) == key:
            return
        bind = self.binding.bind_output if output else self.binding.bind_input
        bind(name, "cpu", 0, array.dtype, list(shape), array.ctypes.data)
        self.bound[name] = key
