"""`python -m bench --quick` runs end to end and writes every section with figures.

Timings are not asserted (functional tests never assert timings: docs/architecture.md, design
rules); only that each benchmark produced numbers, so a benchmark that breaks is noticed
before the next full run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "## Headline": r"\| met |",
    "## Throughput": r"\d[\d,]* \(|\| \d[\d,.]* \|",
    "## Memory": r"\d+(\.\d+)? ",
    "## Start-up": r"\d+\.\d+",
    "## Reaction": r"\d+\.\d+",
    "## Control plane": r"\d+\.\d+ s",
    "## Profile": r"\d+\.\d+ µs",
    "## Metrics": r"\d+\.\d+\)? ms",
    "## Scale": r"\| launch → READY=1 \(s\) \| \d+\.\d+",
    "## Fairness": r"lost\) \| 0 \|",
    "## Footprint": r"idle child PSS \| \d+\.\d+",
    "## Network": r"\| native \| 2 \| 0 \| \d+\.\d+",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "b.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    parts = re.split(r"(?m)^(?=## )", text)
    for heading, figure in SECTIONS.items():
        body = next((p for p in parts if p.startswith(heading)), None)
        assert body is not None, f"missing section {heading}"
        assert re.search(figure, body), f"no figures in {heading}:\n{body[:800]}"
    for png in ("bench-throughput.png", "bench-memory.png", "bench-scale.png"):
        assert (tmp_path / png).stat().st_size > 0
