"""Where each setting came from, and how a mistake there is told in one line.

An operator reading the journal should see *where* (file:line:column), *which key* and *what
was expected* -- never a jsonschema dump or a traceback. This module keeps the positions
(YAML read round-trip, the command line, the merged result) and owns the wording, so that
``config.py`` can stay about checking and merging.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # ruamel.yaml and jsonschema load only where a file is read and checked,
    # so a master that had its config read by a short-lived process never holds them
    from jsonschema import ValidationError

#: sysexits.h EX_CONFIG: the process exits with this status on a user's configuration mistake.
EX_CONFIG = 78

#: Where values given on the command line come from (no file, line or column).
COMMAND_LINE = "command line"

_MAX_SHOWN = 60


def single_line(text: str) -> str:
    """Fold any line break away: the message must stay one journal line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class ConfigError(Exception):
    """A user's configuration mistake; ``str()`` is exactly one line, ``exit_status`` is 78."""

    exit_status: int = EX_CONFIG

    def __init__(self, message: str) -> None:
        super().__init__(single_line(message))
        self.message: str = self.args[0]

    def __str__(self) -> str:
        return self.message


def format_key(key: Any) -> str:
    """Show a mapping key as typed, quoting only keys that would be ambiguous or break the line."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key:
        return key
    return shorten(repr(key))


def format_path(path: Sequence[Any], command_line: bool = False) -> str:
    """``worker_options.GLOBAL``, ``server[1]``; ``--namespaces`` for a command-line value."""
    if not path:
        return "top level"
    text = ""
    for step in path:
        if isinstance(step, int) and not isinstance(step, bool) and text:
            text += f"[{step}]"
        else:
            text += ("." if text else "") + format_key(step)
    return f"--{text}" if command_line else text


def shorten(text: str) -> str:
    """Keep a quoted value from swamping the message."""
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def got(value: Any) -> str:
    """Name what the user wrote: the value for scalars, the kind for containers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return shorten(repr(str(value)))
    if isinstance(value, int | float):
        return shorten(repr(value))
    if isinstance(value, Mapping):
        return "mapping" if value else "empty mapping"
    if isinstance(value, list | tuple):
        return "list" if value else "empty list"
    if isinstance(value, Set):
        return "set"
    if isinstance(value, datetime.date):
        return f"date {value.isoformat()}"
    if isinstance(value, bytes | bytearray):
        return "binary data"
    tag = getattr(value, "tag", None)
    tag_value = getattr(tag, "value", tag)
    if isinstance(tag_value, str) and tag_value:
        return shorten(f"value tagged {tag_value}")
    return type(value).__name__


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _describe_type(kind: str, schema: Mapping[str, Any]) -> str:
    if kind in ("integer", "number"):
        noun = "an integer" if kind == "integer" else "a number"
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None and high is not None:
            return f"{noun} {_number(low)}..{_number(high)}"
        if low is not None:
            return f"{noun} >= {_number(low)}"
        if "exclusiveMinimum" in schema:
            return f"{noun} > {_number(schema['exclusiveMinimum'])}"
        if high is not None:
            return f"{noun} <= {_number(high)}"
        return noun
    if kind == "string":
        return "a non-empty string" if schema.get("minLength", 0) >= 1 else "a string"
    return {
        "boolean": "true or false",
        "null": "null",
        "object": "a mapping",
        "array": "a list",
    }.get(kind, kind)


def describe(schema: Any) -> str:
    """Say in words what a (sub)schema accepts, e.g. ``a number >= 0`` or ``one of: a, b``."""
    if not isinstance(schema, Mapping):
        return "a valid value"
    if "x-expected" in schema:
        return str(schema["x-expected"])
    if "enum" in schema:
        return "one of: " + ", ".join(str(item) for item in schema["enum"])
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        return "a valid value"
    return " or ".join(_describe_type(kind, schema) for kind in kinds)


@dataclass(frozen=True)
class Problem:
    """One mistake found in one document, before it is given a file position."""

    path: tuple[Any, ...]
    text: str
    at_key: bool = False  # point at the key (unknown or malformed key) rather than the value


def problems(error: ValidationError) -> Iterator[Problem]:
    """Translate one jsonschema error into our wording; several for several unknown keys."""
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        known = sorted(str(key) for key in schema.get("properties", {}))
        wanted = f"expected one of: {', '.join(known)}" if known else "no keys are allowed here"
        for key in error.instance:
            if key not in schema.get("properties", {}):
                yield Problem(path + (key,), f"unknown key ({wanted})", at_key=True)
        return
    if "propertyNames" in error.schema_path:
        key = error.instance
        yield Problem(path + (key,), f"expected {describe(schema)}, got {got(key)}", True)
        return
    yield Problem(path, f"expected {describe(schema)}, got {got(error.instance)}")


# --- where things are ---------------------------------------------------------------------


class Origin(NamedTuple):
    """Who set a key path last: kept in Settings so later errors can still point at it."""

    key: str  # "file:line:col" of the key, or "command line"
    value: str  # "file:line:col" of the value
    seq: int  # higher = set later


class Source:
    """One source of settings: a YAML file (with positions) or the command line."""

    def __init__(self, label: str, data: Any, tree: Any = None) -> None:
        self.label, self.data, self.tree = label, data, tree

    @property
    def command_line(self) -> bool:
        return self.label == COMMAND_LINE

    def where(self, path: Sequence[Any], at_key: bool = False) -> str:
        """``file:line:col`` of a value (or its key), 1-based; the deepest node that exists."""
        if self.command_line:
            return COMMAND_LINE
        from ruamel.yaml.comments import CommentedMap, CommentedSeq

        node, line, col = self.tree, 0, 0
        lc = getattr(node, "lc", None)
        if lc is not None and isinstance(lc.line, int):
            line, col = lc.line, lc.col
        for index, step in enumerate(path):
            last = index == len(path) - 1
            try:
                if isinstance(node, CommentedMap) and step in node:
                    child = node[step]
                    use_key = (last and at_key) or child is None
                    line, col = node.lc.key(step) if use_key else node.lc.value(step)
                elif isinstance(node, CommentedSeq) and isinstance(step, int):
                    child = node[step]
                    line, col = node.lc.item(step)
                else:
                    break
            except (KeyError, IndexError, TypeError, AttributeError):
                break  # e.g. a key merged in with '<<': keep the enclosing position
            node = child
        return f"{self.label}:{line + 1}:{col + 1}"

    def set_later(self, path: tuple[Any, ...], than: tuple[Any, ...]) -> bool:
        """Was ``path`` set after ``than``? Within one document, neither was."""
        return False

    def error(self, problem: Problem) -> ConfigError:
        where = self.where(problem.path, problem.at_key)
        key_path = format_path(problem.path, self.command_line)
        return ConfigError(f"{where}: {key_path}: {problem.text}")


# --- reading YAML, keeping positions ------------------------------------------------------


#: Bounds on reading one config file, so that no file can stall or exhaust the daemon (a reload
#: is read in the master's loop): its size, the values it holds once YAML aliases are expanded
#: (an "alias bomb" of a few lines can stand for millions), and how deeply they nest.
MAX_FILE_BYTES = 128 * 1024
MAX_VALUES = 50_000
MAX_DEPTH = 32


class _TooBig(Exception):
    """Raised while expanding: where (the path of the value) and what limit was passed."""

    def __init__(self, path: tuple[Any, ...], text: str) -> None:
        super().__init__(text)
        self.path, self.text = path, text


class _Plain:
    """ruamel's round-trip types to plain Python, so the schema and Settings see dicts and lists;
    counts every value (aliases expanded) and the depth against MAX_VALUES and MAX_DEPTH."""

    def __init__(self) -> None:
        self.active: set[int] = set()
        self.count = 0

    def convert(self, node: Any, path: tuple[Any, ...] = ()) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(path, f"more than {MAX_VALUES} values once aliases are expanded "
                                f"(the limit)")
        if not isinstance(node, Mapping | list):
            return _scalar(node)
        if len(path) >= MAX_DEPTH:
            raise _TooBig(path, f"nested more than {MAX_DEPTH} levels deep (the limit)")
        if id(node) in self.active:
            raise ValueError("recursive alias")
        self.active.add(id(node))
        try:
            if isinstance(node, Mapping):
                return {_scalar(k): self.convert(v, path + (k,)) for k, v in node.items()}
            return [self.convert(item, path + (i,)) for i, item in enumerate(node)]
        finally:
            self.active.discard(id(node))


def _scalar(value: Any) -> Any:
    from ruamel.yaml.scalarbool import ScalarBoolean

    if isinstance(value, ScalarBoolean | bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def _line_col(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _read_bounded(path: str) -> bytes:
    """At most MAX_FILE_BYTES: /dev/zero or a 50 MB file is refused without reading it all."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: config file larger than {MAX_FILE_BYTES // 1024} KiB "
                          f"(the limit)")
    return raw


def read_source(path: str) -> Source:
    """Load one file round-trip so every key and value keeps its line and column."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.reader import ReaderError

    raw = _read_bounded(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, col = _line_col(raw[: exc.start].decode("utf-8", "replace"), exc.start)
        raise ConfigError(f"{path}:{line}:{col}: invalid YAML: not UTF-8 text") from None
    tree = None
    try:
        tree = YAML(typ="rt").load(text)
        data = _Plain().convert(tree)
    except _TooBig as exc:  # named at the key holding the list, not deep inside an alias
        key_path = exc.path[:next((i for i, s in enumerate(exc.path) if isinstance(s, int)),
                                  len(exc.path))]
        where = Source(path, None, tree).where(key_path)
        raise ConfigError(f"{where}: {format_path(key_path)}: {exc.text}") from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{mark.line + 1}:{mark.column + 1}" if mark else "1:1"
        what = exc.problem or exc.context or "syntax error"
        if exc.context and exc.problem and exc.problem.startswith("but "):
            what = f"{exc.context}, {exc.problem}"  # "expected a single document, but found ..."
        raise ConfigError(f"{path}:{where}: invalid YAML: {what}") from None
    except ReaderError as exc:
        line, col = _line_col(text, exc.position)
        raise ConfigError(f"{path}:{line}:{col}: invalid YAML: {exc.reason}") from None
    except RecursionError:
        raise ConfigError(f"{path}:1:1: invalid YAML: nested too deeply") from None
    except Exception as exc:  # ruamel raises many kinds for odd documents, e.g. !!int 'x'
        what = single_line(str(exc)) or type(exc).__name__
        raise ConfigError(f"{path}:1:1: invalid YAML: {what}") from None
    return Source(path, {} if data is None else data, tree)


def first_problem(problems_found: Sequence[Problem], doc: Source) -> None:
    """Report the mistake that comes first in the document: that is where a reader starts."""
    if not problems_found:
        return

    def order(problem: Problem) -> tuple[int, ...]:
        where = doc.where(problem.path, problem.at_key).rsplit(":", 2)
        if len(where) == 3 and where[1].isdigit() and where[2].isdigit():
            return (int(where[1]), int(where[2]))
        return (0, 0)

    raise doc.error(min(problems_found, key=order))


class MergedSource(Source):
    """The merged settings: positions come from whichever source set each path last."""

    def __init__(self, data: dict[str, Any], origins: Mapping[tuple[Any, ...], Origin]) -> None:
        super().__init__("merged", data)
        self.origins = origins

    def _origin(self, path: Sequence[Any]) -> Origin | None:
        here = tuple(path)
        while here:
            if here in self.origins:
                return self.origins[here]
            here = here[:-1]
        return None

    def where(self, path: Sequence[Any], at_key: bool = False) -> str:
        origin = self._origin(path)
        return "defaults" if origin is None else origin.key if at_key else origin.value

    def set_later(self, path: tuple[Any, ...], than: tuple[Any, ...]) -> bool:
        """min > max across files: blame whichever of the two was set last."""
        mine, theirs = self._origin(path), self._origin(than)
        return mine is not None and (theirs is None or mine.seq > theirs.seq)

    def error(self, problem: Problem) -> ConfigError:
        cli = self.where(problem.path) == COMMAND_LINE
        where = self.where(problem.path, problem.at_key)
        return ConfigError(f"{where}: {format_path(problem.path, cli)}: {problem.text}")
