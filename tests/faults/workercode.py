"""Worker code written by a test into its own temporary `lib` directory, so that a scenario can
change, break or replace it on disk as an operator's deploy would, and a scrape of the metrics
endpoint read as Prometheus reads it."""

from __future__ import annotations

import textwrap
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def write_module(lib: Path, module: str, source: str) -> Path:
    """Write `source` as `module` (dotted) below `lib`, packages made on the way; returns
    the file. Each package's __init__.py is created empty where it is missing."""
    parts = module.split(".")
    directory = lib
    for package in parts[:-1]:
        directory = directory / package
        directory.mkdir(parents=True, exist_ok=True)
        init = directory / "__init__.py"
        if not init.exists():
            init.write_text("")
    path = directory / f"{parts[-1]}.py"
    path.write_text(textwrap.dedent(source))
    return path


def scrape(port: int, timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One GET /metrics: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))
