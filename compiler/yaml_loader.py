"""YAML loading that remembers the line of every mapping key and list item.

PyYAML's node tree has line marks; the plain `safe_load` drops them. Errors in
a spec must name the line, so mappings load as `LineDict` and lists as
`LineList`, each carrying the 1-based line of its entries.
"""
from __future__ import annotations

import yaml


class LineDict(dict):
    """A dict that knows the line of each key (`.lines[key]`) and its own (`.line`)."""

    line: int = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lines: dict = {}


class LineList(list):
    """A list that knows the line of each item (`.lines[i]`) and its own (`.line`)."""

    line: int = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(text: str, filename: str):
    """Parse YAML text; a syntax error becomes a SpecError naming file and line."""
    from .errors import SpecError

    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        message, line = describe_yaml_error(err)
        raise SpecError(message, file=filename, line=line) from None


_OPENERS = {"flow sequence": "[", "flow mapping": "{", "quoted scalar": "quote"}


def describe_yaml_error(err: yaml.MarkedYAMLError) -> tuple[str, int | None]:
    """The message and line of a YAML syntax error, naming both of PyYAML's marks.

    PyYAML notices an unclosed `{`, `[` or quote only where the next thing
    fails to parse (often the next line): then the error's line is the
    opener's and the message says where parsing stopped. Otherwise the line is
    where it stopped and the message says where the construct began.
    """
    problem = err.problem or str(err)
    p_line = err.problem_mark.line + 1 if err.problem_mark else None
    c_line = err.context_mark.line + 1 if err.context_mark else None
    context = err.context or ""
    if c_line is None or c_line == p_line:
        where = f" ({context})" if context else ""
        return f"invalid YAML: {problem}{where}", p_line or c_line
    opener = next((o for k, o in _OPENERS.items() if k in context), None)
    if opener is not None and p_line is not None:
        what = f"the {opener}" if opener == "quote" else f"the '{opener}'"
        return (f"invalid YAML: {what} opened at line {c_line} is not closed: {problem} "
                f"at line {p_line}", c_line)
    if p_line is None:
        return f"invalid YAML: {problem} ({context} at line {c_line})", c_line
    return (f"invalid YAML: {problem} at line {p_line} ({context} that starts at line "
            f"{c_line})", p_line)
