"""What worker code the master runs, by content: to tell on a reload whether it changed.

A reload cannot re-import worker code in the master (the master re-executes itself for that),
so it must know whether the code on disk is still the code it imported. Modification times
lie: a deploy may keep them (rsync -t, tar, a package, a `git checkout` of an older tree), and
the changed file may be a helper module in a `lib` directory that no namespace names. So the
stamp is every module imported from the worker paths (the `lib` directories and the namespace
packages' directories), with a digest of its file's bytes, and the module names each namespace
has on disk (a module added or removed is a change too).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: the digest of a file that can no longer be read (removed, or unreadable now)
GONE = "gone"


@dataclass(frozen=True)
class CodeStamp:
    """Module name -> (file, digest of its bytes); namespace -> module names on disk."""

    files: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    found: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def digest(path: str) -> str:
    try:
        with open(path, "rb") as source:
            return hashlib.sha256(source.read()).hexdigest()
    except OSError:
        return GONE


def worker_roots(namespaces: Sequence[str], lib: Sequence[str]) -> list[str]:
    """The directories worker code comes from: `lib`, and each imported namespace package's."""
    roots = [os.path.realpath(d) for d in lib]
    for name in namespaces:
        module = sys.modules.get(name)
        for directory in getattr(module, "__path__", None) or ():
            roots.append(os.path.realpath(directory))
        path = getattr(module, "__file__", None)
        if path and not getattr(module, "__path__", None):  # a namespace that is one module
            roots.append(os.path.realpath(path))
    return roots


def _under(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def stamp(namespaces: Sequence[str], lib: Sequence[str],
          found: Mapping[str, Sequence[str]]) -> CodeStamp:
    """The stamp of what this process imported from the worker paths; `found` is what
    each namespace held on disk (loader.module_names), as listed when it was imported."""
    roots = worker_roots(namespaces, lib)
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name == "gearman_driver" or name.startswith("gearman_driver."):
            continue
        real = os.path.realpath(path)
        if _under(real, roots):
            files[name] = (real, digest(real))
    return CodeStamp(files, {ns: tuple(names) for ns, names in found.items()})


def restamp(before: CodeStamp, found: Mapping[str, Sequence[str]]) -> CodeStamp:
    """The same files read again now, and the namespaces' modules as listed now."""
    files = {name: (path, digest(path)) for name, (path, _) in before.files.items()}
    return CodeStamp(files, {ns: tuple(names) for ns, names in found.items()})


def changes(before: CodeStamp, now: CodeStamp) -> list[str]:
    """The modules whose code differs (changed, removed, or new on disk), sorted."""
    changed = {name for name, (_, sha) in now.files.items()
               if before.files.get(name, ("", sha))[1] != sha}
    for namespace in set(before.found) | set(now.found):
        changed |= set(before.found.get(namespace, ())) ^ set(now.found.get(namespace, ()))
    return sorted(changed)
