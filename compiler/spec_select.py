"""Which spec in specs/ serves a checkpoint: by its config.json's architectures / model_type.

`select_spec` picks one for a config; `other_family` says, when a spec given by hand is not
the checkpoint's family, which one would be (bind.py adds it to the unread-tensors warning).
"""
from __future__ import annotations

from .errors import SpecError
from .spec import Spec


def other_family(spec: Spec, config: dict) -> str:
    """'; this spec is for ..., the checkpoint is ...: specs/x.yaml serves it' when a spec
    given by hand (--spec) is not the checkpoint's family: the likely cause of unread tensors."""
    archs = list(config.get("architectures") or [])
    if not archs and not config.get("model_type"):
        return ""   # the config does not say what it is
    if set(archs) & set(spec.architectures) or config.get("model_type") in spec.model_types:
        return ""
    try:
        other = f"{select_spec(config)} serves it"
    except SpecError:
        other = "no spec in specs/ serves it"
    mine = ", ".join(spec.architectures or spec.model_types) or "another family"
    theirs = ", ".join(archs) or config.get("model_type")
    return f"; this spec is for {mine}, the checkpoint is {theirs} ({other}): its answers will be wrong"


_MATCHES: dict[str, tuple] = {}   # spec path -> (mtime_ns, size, architectures, model_types)


def select_spec(config: dict) -> str:
    """The spec whose `matches` fits a config's architectures / model_type."""
    from .spec import SPECS_DIR, load_spec

    archs = set(config.get("architectures") or [])
    model_type = config.get("model_type")
    for path in sorted(SPECS_DIR.glob("*.yaml")):
        # Parsing YAML with line numbers is slow; a spec is re-read only when it changes.
        stat = path.stat()
        known = _MATCHES.get(str(path))
        if known is None or known[:2] != (stat.st_mtime_ns, stat.st_size):
            spec = load_spec(path)
            known = (stat.st_mtime_ns, stat.st_size, set(spec.architectures), set(spec.model_types))
            _MATCHES[str(path)] = known
        if archs & known[2] or (model_type and model_type in known[3]):
            return str(path)
    served = sorted({a for known in _MATCHES.values() for a in known[2]})
    raise SpecError(f"no spec here serves architectures {sorted(archs)} / model_type "
                    f"{model_type!r} (they serve {', '.join(served)}); pass --spec with a "
                    "spec of your own (docs/adding-a-model.md)", file=str(SPECS_DIR))
