#!/usr/bin/python3
"""Write the config file the package ships: the repository's, with the examples' directory as `lib`.

The examples (`namespaces: [examples.workers]`) are installed in /usr/share/gearman-driver, which
is not on sys.path; so a fresh install passes `gearman-driver --check-config`, a `lib:` entry that
names that directory goes right after the `namespaces:` block; fails if `lib:` is set already.
"""

import re
import sys

EXAMPLES_LIB = "/usr/share/gearman-driver"


def main(source: str, target: str) -> int:
    with open(source, encoding="utf-8") as handle:
        lines = handle.read().splitlines(keepends=True)
    if any(re.match(r"lib\s*:", line) for line in lines):
        print(f"{source}: sets lib: already; update debian/shipped-config.py", file=sys.stderr)
        return 1
    starts = [i for i, line in enumerate(lines) if re.match(r"namespaces\s*:", line)]
    if len(starts) != 1:
        print(f"{source}: expected one top-level namespaces: key", file=sys.stderr)
        return 1
    end = starts[0] + 1
    while end < len(lines) and re.match(r"\s+-|\s+\S", lines[end]):
        end += 1  # the block's list items (or a continued flow sequence)
    insert = [
        f"# The Debian package installs the examples above in {EXAMPLES_LIB}.\n",
        "lib:\n",
        f"  - {EXAMPLES_LIB}\n",
    ]
    lines[end:end] = insert
    with open(target, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
