"""Reading a rules file: YAML whose every mapping and list remembers the line of each item, and the
``Checker`` that collects problems against one file (``file:line: field: message``, every problem at
once) with the typed reads every field shares: ``${VAR:-default}`` substitution, durations, booleans.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from .errors import RuleProblem


class LineDict(dict):
    line = 1
    lines: dict
    duplicates: list


class LineList(list):
    line = 1
    lines: list


class Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line, out.lines, out.duplicates = node.start_mark.line + 1, {}, []
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if getattr(key, "__hash__", None) is None:  # `? [a]: b`; SafeLoader refuses these too
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    "found unhashable key", key_node.start_mark)
        line = key_node.start_mark.line + 1
        if key in out:
            out.duplicates.append((key, line))
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = line
    return out


def _construct_sequence(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> LineList:
    out = LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line, out.lines = node.start_mark.line + 1, [c.start_mark.line + 1 for c in node.value]
    return out


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def line_of(container: Any, key: Any = None) -> int:
    if key is not None and isinstance(container, LineDict):
        return getattr(container, "lines", {}).get(key, container.line)  # a default LineDict() has no lines
    if key is not None and isinstance(container, LineList) and isinstance(key, int):
        return container.lines[key] if key < len(container.lines) else container.line
    return getattr(container, "line", 1)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
MAX_SECONDS = 365 * 86400  # longer would overflow store expiries (Redis refuses them: every fill would fail)
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class Checker:
    """Collects problems against one file; each ``want_*`` returns a typed value or None."""

    def __init__(self, filename: str, environ: dict[str, str]):
        self.filename, self.environ, self.problems = filename, environ, []

    def fail(self, line: int, fieldname: str, message: str) -> None:
        problem = RuleProblem(self.filename, line, fieldname, message)
        if problem not in self.problems:  # a bad default is parsed once per rule: report it once
            self.problems.append(problem)

    def report_duplicates(self, mapping: Any, where: str) -> None:
        for key, line in getattr(mapping, "duplicates", ()):
            self.fail(line, f"{where}{key}", "duplicate field")

    def substitute(self, value: Any, line: int, fieldname: str) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value

        def repl(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is None:
                self.fail(line, fieldname, f"environment variable {name} is not set and has no default")
                return ""
            return default

        return _ENV.sub(repl, value)

    def seconds(self, value: Any, line: int, fieldname: str, allow_zero: bool) -> int | None:
        value = self.substitute(value, line, fieldname)
        if isinstance(value, bool):
            value = None
        if isinstance(value, int):
            seconds = value
        elif isinstance(value, str) and (m := _DURATION.match(value)):
            n, unit = int(m.group(1)), m.group(2)
            seconds = n // 1000 if unit == "ms" else n * _UNITS[unit]
        else:
            self.fail(line, fieldname, f"expected seconds (an integer or e.g. '15m'), got {value!r}")
            return None
        if seconds < 0 or (seconds == 0 and not allow_zero):
            self.fail(line, fieldname, f"must be {'>= 0' if allow_zero else '> 0'}, got {seconds}")
            return None
        if seconds > MAX_SECONDS:
            self.fail(line, fieldname, f"must be at most {MAX_SECONDS} (365 days), got {seconds}")
            return None
        return seconds

    def boolean(self, value: Any, line: int, fieldname: str) -> bool | None:
        value = self.substitute(value, line, fieldname)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, bool):
            return value
        self.fail(line, fieldname, f"expected true or false, got {value!r}")
        return None

    def string_list(self, value: Any, line: int, fieldname: str) -> tuple[str, ...] | None:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(line, fieldname, "expected a list of non-empty strings")
            return None
        return tuple(self.substitute(v, line, fieldname) for v in value)
