"""Checking one source of settings (a YAML file, the command line, or their merge): the JSON
Schema first, then the rules a schema cannot say; the first mistake is a one-line ConfigError
at its file, line and column."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gearman_driver.api import MAX_CONCURRENCY
from gearman_driver.config.reading import (
    ConfigError,
    Problem,
    Source,
    first_problem,
    got,
    problems,
)
from gearman_driver.config.servers import ServerError, parse_gearmand_servers
from gearman_driver.peercred import resolve_users
from gearman_driver.scoreboard import MAX_PROCESSES

if TYPE_CHECKING:  # jsonschema loads only where a config is checked: in the short-lived
    # reader (config/reader.py), never in the master whose heap every worker shares
    from jsonschema.protocols import Validator


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema, from the installed package or, in a source tree, from ``schema/``."""
    from importlib import resources  # 1.5 MB of imports: only where a config is checked

    try:
        text = (resources.files("gearman_driver.schema") / "config.schema.json").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        text = (Path(__file__).parents[2] / "schema" / "config.schema.json").read_text("utf-8")
    return with_process_ceiling(json.loads(text))


def with_process_ceiling(loaded: dict[str, Any]) -> dict[str, Any]:
    """The process ceiling has one home (the scoreboard's size), the ceiling of a job's slots
    another (the API's); the schema gets both here."""
    limits = loaded["properties"]["job_runtime_attributes"]["additionalProperties"]["properties"]
    for key in ("min_processes", "max_processes"):
        limits[key]["maximum"] = MAX_PROCESSES
    limits["concurrency"]["maximum"] = MAX_CONCURRENCY
    return loaded


def _is_finite_number(checker: Any, value: Any) -> bool:
    """JSON has no NaN or infinity; YAML's ``.nan`` must not slip past ``minimum``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """ECMA-262 ``$`` ends the string; Python's also matches before a final newline."""
    if isinstance(instance, str):
        python = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(python, instance):
            import jsonschema

            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator() -> Validator:
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("number", _is_finite_number)
    cls = jsonschema.validators.extend(base, {"pattern": _pattern}, type_checker=checker)
    validator: Validator = cls(schema())
    return validator



def check(doc: Source) -> None:
    """Schema first, then the rules a schema cannot say (port range, min <= max)."""
    try:
        errors = list(_validator().iter_errors(doc.data))
    except RecursionError:
        raise ConfigError(f"{doc.where(())}: top level: nested too deeply") from None
    first_problem([p for error in errors for p in problems(error)], doc)
    found: list[Problem] = []
    for index, user in enumerate(doc.data.get("console_allow_users") or []):
        try:
            resolve_users([user])
        except KeyError:
            found.append(Problem(("console_allow_users", index),
                                 f"expected a user name, a uid or '*', got {got(user)} "
                                 "(no such user)"))
    if "server" in doc.data:
        try:
            parse_gearmand_servers(doc.data["server"])
        except ServerError as exc:
            found.append(Problem(("server",) + exc.index, exc.text))
    for name, attrs in (doc.data.get("job_runtime_attributes") or {}).items():
        low, high = attrs.get("min_processes"), attrs.get("max_processes")
        if low is not None and high is not None and low > high:
            entry = ("job_runtime_attributes", name)
            if doc.set_later(entry + ("max_processes",), entry + ("min_processes",)):
                text = f"expected at least min_processes ({low}), got {got(high)}"
                found.append(Problem(entry + ("max_processes",), text))
            else:
                text = f"expected at most max_processes ({high}), got {got(low)}"
                found.append(Problem(entry + ("min_processes",), text))
    first_problem(found, doc)

