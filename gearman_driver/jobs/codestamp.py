"""What worker code a master runs, by content: to tell on a reload whether it changed.

A reload cannot re-import worker code in the master (the master re-executes itself for that),
so it must know whether the code on disk is still the code it imported. Modification times
lie: a deploy may keep them (rsync -t, tar, a package, a `git checkout` of an older tree), and
the changed file may be a helper module in a `lib` directory that no namespace names. So the
stamp is every module imported from the worker paths (the `lib` directories and the namespace
packages' directories), with a digest of its file's bytes, and the modules each namespace's
directories hold on disk (a module added or removed is a change too), listed without importing
anything, so that any process can take the stamp of code it has not imported (the master
checks the code a reload's trial loaded once more right before it re-executes itself).
"""

from __future__ import annotations

import hashlib
import os
import pkgutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: the digest of a file that can no longer be read (removed, or unreadable now)
GONE = "gone"


@dataclass(frozen=True)
class CodeStamp:
    """Module name -> (file, digest of its bytes); namespace -> its package directories, and
    the module names they hold on disk."""

    files: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    dirs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    found: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"files": {k: list(v) for k, v in self.files.items()},
                "dirs": {k: list(v) for k, v in self.dirs.items()},
                "found": {k: list(v) for k, v in self.found.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CodeStamp:
        return cls({k: (str(v[0]), str(v[1])) for k, v in data["files"].items()},
                   {k: tuple(v) for k, v in data["dirs"].items()},
                   {k: tuple(v) for k, v in data["found"].items()})


def digest(path: str) -> str:
    try:
        with open(path, "rb") as source:
            return hashlib.sha256(source.read()).hexdigest()
    except OSError:
        return GONE


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _listed(namespace: str, dirs: Sequence[str]) -> tuple[str, ...]:
    """The namespace and the modules below it in `dirs`, from the file system alone."""
    return (namespace, *sorted(_walk(list(dirs), namespace + ".")))


def _walk(paths: list[str], prefix: str) -> Iterator[str]:
    for info in pkgutil.iter_modules(paths, prefix):
        yield info.name
        where = getattr(info.module_finder, "path", None)
        if info.ispkg and isinstance(where, str):  # a plain directory; a zip is one entry
            yield from _walk([os.path.join(where, info.name.rpartition(".")[2])],
                             info.name + ".")


def stamp(namespaces: Sequence[str], lib: Sequence[str]) -> CodeStamp:
    """The stamp of what this process imported from the worker paths of these settings."""
    dirs: dict[str, tuple[str, ...]] = {}
    roots = [os.path.realpath(d) for d in lib]
    for name in namespaces:
        module = sys.modules.get(name)
        package = tuple(os.path.realpath(d) for d in getattr(module, "__path__", None) or ())
        dirs[name] = package
        roots.extend(package)
        path = getattr(module, "__file__", None)
        if path and not package:  # a namespace that is a single module
            roots.append(os.path.realpath(path))
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name == "gearman_driver" or name.startswith("gearman_driver."):
            continue
        real = os.path.realpath(path)
        if _within(real, roots):
            files[name] = (real, digest(real))
    return CodeStamp(files, dirs, {ns: _listed(ns, d) for ns, d in dirs.items()})


def restamp(before: CodeStamp) -> CodeStamp:
    """The same files read again now, and the same directories listed again now."""
    files = {name: (path, digest(path)) for name, (path, _) in before.files.items()}
    return CodeStamp(files, before.dirs, {ns: _listed(ns, d) for ns, d in before.dirs.items()})


def changes(before: CodeStamp, now: CodeStamp) -> list[str]:
    """The modules whose code differs (changed, removed, or new on disk), sorted."""
    changed = {name for name, (_, sha) in now.files.items()
               if before.files.get(name, ("", sha))[1] != sha}
    for namespace in set(before.found) | set(now.found):
        changed |= set(before.found.get(namespace, ())) ^ set(now.found.get(namespace, ()))
    return sorted(changed)
