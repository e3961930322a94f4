"""Where a process's private memory is: per mapping (smaps) and page by page (pagemap).

    python -m bench.smaps PID [--top 15]             # private kB per mapping, biggest first
    python -m bench.smaps PID --since SNAPSHOT.json  # pages that became private since then
    python -m bench.smaps PID --save SNAPSHOT.json   # remember which pages are private now

A forked child shares its master's pages until it writes to them; the pages it has written
(or that were only ever its own) are private: they are what a child really costs. smaps
gives Private_Clean/Private_Dirty per mapping; /proc/PID/pagemap says page by page whether a
page is present and mapped by this process alone (bit 56, "exclusively mapped"), so two
snapshots show exactly which pages running jobs made private, and in which mapping.
"""

from __future__ import annotations

import argparse
import json
import struct
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PAGE = 4096
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56


@dataclass
class Mapping:
    start: int
    end: int
    perms: str
    name: str
    kb: dict[str, int]

    @property
    def private_kb(self) -> int:
        return self.kb.get("Private_Clean", 0) + self.kb.get("Private_Dirty", 0)


def mappings(pid: int) -> list[Mapping]:
    """/proc/PID/smaps parsed: every mapping with its kB fields."""
    out: list[Mapping] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            out.append(Mapping(start, end, head[1], head[5] if len(head) > 5 else "", {}))
        elif out and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            out[-1].kb[head[0][:-1]] = int(head[1])
    return out


def kind(m: Mapping) -> str:
    """A name a reader recognises: what sort of memory this mapping holds."""
    if m.name == "[heap]":
        return "[heap] (brk: malloc'd blocks, small objects before the arenas)"
    if m.name == "":
        return "anonymous (pymalloc arenas, large objects, mmap'd buffers)"
    if m.name.startswith("["):
        return m.name
    base = m.name.rsplit("/", 1)[-1]
    if "w" in m.perms:
        return f"{base} (writable data: .data/.bss/relocations)"
    return base


def by_kind(pid: int) -> dict[str, dict[str, int]]:
    """kind → {Private_Dirty, Private_Clean, Pss, Rss} in kB, summed over its mappings."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m in mappings(pid):
        row = table[kind(m)]
        for key in ("Private_Dirty", "Private_Clean", "Pss", "Rss"):
            row[key] += m.kb.get(key, 0)
    return {k: dict(v) for k, v in table.items()}


def private_pages(pid: int) -> dict[str, list[int]]:
    """kind → addresses of the pages present and mapped by this process alone (pagemap)."""
    pages: dict[str, list[int]] = defaultdict(list)
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for m in mappings(pid):
            if m.name == "[vsyscall]" or m.end - m.start > 1 << 34:
                continue
            count = (m.end - m.start) // PAGE
            pagemap.seek(m.start // PAGE * 8)
            data = pagemap.read(count * 8)
            flags = struct.unpack(f"{len(data) // 8}Q", data)
            private = [m.start + i * PAGE for i, entry in enumerate(flags)
                       if entry & _PRESENT and entry & _EXCLUSIVE]
            if private:
                pages[kind(m)].extend(private)
    return dict(pages)


def runs(addresses: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs of pages as (first address, pages)."""
    out: list[tuple[int, int]] = []
    for addr in sorted(addresses):
        if out and out[-1][0] + out[-1][1] * PAGE == addr:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((addr, 1))
    return out


def new_private(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, int]:
    """kind → how many pages are private now that were not at `before` (made private by work)."""
    return {k: len(set(v) - set(before.get(k, ()))) for k, v in after.items()
            if set(v) - set(before.get(k, ()))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pid", type=int)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--save", type=Path, help="write the private pages to this file")
    parser.add_argument("--since", type=Path, help="compare with pages saved by --save")
    args = parser.parse_args(argv)
    rows = sorted(by_kind(args.pid).items(), key=lambda kv: -(kv[1].get("Private_Dirty", 0)
                                                                + kv[1].get("Private_Clean", 0)))
    print(f"{'private dirty kB':>16} {'private clean kB':>16} {'Pss kB':>8}  mapping")
    for name, row in rows[:args.top]:
        print(f"{row.get('Private_Dirty', 0):16d} {row.get('Private_Clean', 0):16d} "
              f"{row.get('Pss', 0):8d}  {name}")
    pages = private_pages(args.pid)
    if args.save:
        args.save.write_text(json.dumps(pages))
    if args.since:
        before = json.loads(args.since.read_text())
        print("\npages made private since the snapshot:")
        for name, count in sorted(new_private(before, pages).items(), key=lambda kv: -kv[1]):
            fresh = sorted(set(pages[name]) - set(before.get(name, ())))
            spans = ", ".join(f"{a:#x}+{n}" for a, n in runs(fresh)[:8])
            print(f"{count:8d} pages ({count * PAGE // 1024} kB)  {name}: {spans}")


if __name__ == "__main__":
    main()
