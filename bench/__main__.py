"""`python -m bench [--quick] [--only NAME[,NAME]] [--out docs/benchmarks.md]`

Runs every benchmark against a private gearmand, shows progress on stderr, prints the headline
table and writes the markdown report (with its PNG plots beside it).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    control,
    fairness,
    footprint,
    memory,
    metrics,
    network,
    profile,
    reaction,
    report,
    scale,
    slots,
    startup,
    throughput,
)
from bench.common import ROOT, Context, Section, progress, scratch_dir

BENCHMARKS: dict[str, Callable[[Context], Section]] = {
    "throughput": throughput.run,
    "memory": memory.run,
    "startup": startup.run,
    "reaction": reaction.run,
    "control": control.run,
    "profile": profile.run,
    "metrics": metrics.run,
    # fairness before scale: right after scale's 500-process daemons, one of its drivers
    # registered 0.5 s late (0.13-0.2 s on a machine that had settled)
    "fairness": fairness.run,
    "scale": scale.run,
    "footprint": footprint.run,
    "network": network.run,
    "slots": slots.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="one repeat, smaller sizes (what tests/bench runs)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    out: Path = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info()
    started = time.monotonic()
    sections: list[Section] = []
    failed = 0
    with scratch_dir() as tmp:
        ctx = Context(quick=args.quick, reps=1 if args.quick else 3, tmp=tmp,
                      plot_dir=out.parent)
        for name in names:
            progress(f"== {name} ==")
            try:
                sections.append(BENCHMARKS[name](ctx))
            except Exception as exc:  # one broken benchmark must not lose the others
                failed += 1
                traceback.print_exc()
                sections.append(Section(name, name, notes=[f"failed: {exc!r}"]))
    elapsed = time.monotonic() - started
    text = report.render(sections, machine, quick=args.quick, elapsed=elapsed)
    out.write_text(text)
    print(report.plain(sections))
    progress(f"wrote {out} in {elapsed:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
