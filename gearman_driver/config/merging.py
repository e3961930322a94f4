"""Merging the sources of settings: files in order (mappings key by key, anything else
replaced), then command-line values on top, each path remembering which source set it (so that
a mistake found in the merge is reported where it was made)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gearman_driver.config.reading import COMMAND_LINE, MergedSource, Origin, Source, read_source
from gearman_driver.config.validation import check

_INT_KEYS = frozenset({"console_port", "metrics_port", "max_jobs_per_process", "max_jobs_jitter"})
_FLOAT_KEYS = frozenset({"interval", "max_idle_time", "graceful_timeout", "keepalive"})


def coerce_override(key: str, value: Any) -> Any:
    """Turn a command-line string into the number the schema wants; leave the rest to the schema."""
    if not isinstance(value, str) or key not in _INT_KEYS | _FLOAT_KEYS:
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    if key in _FLOAT_KEYS:
        try:
            return float(text)
        except ValueError:
            pass
    return value


def validate_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Coerce and check command-line values; errors read ``command line: --key: expected ...``."""
    values = {key: coerce_override(key, value) for key, value in overrides.items()}
    check(Source(COMMAND_LINE, values))
    return values


# --- merging --------------------------------------------------------------------------------


def _paths(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield from _paths(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, path + (index,))


def _merge(
    into: dict[str, Any],
    new: Mapping[Any, Any],
    doc: Source,
    origins: dict[tuple[Any, ...], Origin],
    seq: int,
    path: tuple[Any, ...] = (),
) -> None:
    """Mappings merge key by key; a scalar or list replaces; remember who set each path."""
    for key, value in new.items():
        here = path + (key,)
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            origins[here] = Origin(doc.where(here, True), doc.where(here), seq)
            _merge(into[key], value, doc, origins, seq, here)
            continue
        for stale in [p for p in origins if p[: len(here)] == here]:
            del origins[stale]
        into[key] = copy.deepcopy(value)
        for sub in _paths(value, here):
            origins[sub] = Origin(doc.where(sub, True), doc.where(sub), seq)



def merge_sources(config_files: Sequence[str], overrides: Mapping[str, Any] | None = None
                  ) -> MergedSource:
    """Read, check and merge ``config_files`` in order, then apply command-line ``overrides``;
    the merge is checked again (a rule may span files)."""
    merged: dict[str, Any] = {}
    origins: dict[tuple[Any, ...], Origin] = {}
    for seq, path in enumerate(config_files, start=1):
        doc = read_source(str(path))
        check(doc)
        _merge(merged, doc.data, doc, origins, seq)
    if overrides:
        cli = Source(COMMAND_LINE, validate_overrides(overrides))
        for key, value in cli.data.items():
            for stale in [p for p in origins if p[:1] == (key,)]:
                del origins[stale]
            merged[key] = copy.deepcopy(value)
            for sub in _paths(value, (key,)):
                origins[sub] = Origin(COMMAND_LINE, COMMAND_LINE, len(config_files) + 1)
    source = MergedSource(merged, origins)
    check(source)
    return source
