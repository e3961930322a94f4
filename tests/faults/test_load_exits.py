"""Worker code that calls sys.exit() while it is loaded is a load error, not a silent exit
(issue 21, item 3): `--check-config` and the daemon both exit 78 with one line naming the
module or class, where they exited 0 with no output (sys.exit(0) in a constructor) or 1
(sys.exit("msg") at import)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.driver_util import run_cli
from tests.faults.workercode import write_module

pytestmark = pytest.mark.slow

EX_CONFIG = 78

IMPORT_EXIT = """
    import sys
    sys.exit("cannot find my settings")
"""

CTOR_EXIT = """
    import sys
    from gearman_driver import Worker, job

    class Quitter(Worker):
        def __init__(self, **options):
            super().__init__(**options)
            sys.exit(0)

        @job
        def run(self, job, workload):
            return workload
"""

PREFIX_EXIT = """
    import sys
    from gearman_driver import Worker, job

    class Prefixed(Worker):
        def prefix(self):
            raise SystemExit(3)

        @job
        def run(self, job, workload):
            return workload
"""


@pytest.mark.parametrize("source,words", [
    (IMPORT_EXIT, "cannot import worker module exits.mod: it called "
                  "sys.exit('cannot find my settings')"),
    (CTOR_EXIT, "exits.mod.Quitter: the constructor failed: it called sys.exit(0)"),
    (PREFIX_EXIT, "loading the worker code failed: it called sys.exit(3)"),
])
@pytest.mark.parametrize("check", [True, False], ids=["check-config", "daemon"])
def test_sys_exit_while_loading_is_exit_78_in_one_line(tmp_path: Path, source: str, words: str,
                                                         check: bool) -> None:
    lib = tmp_path / "lib"
    path = write_module(lib, "exits.mod", source)
    config = tmp_path / "c.yml"
    config.write_text(json.dumps({"namespaces": ["exits"], "lib": [str(lib)],
                                  "server": "127.0.0.1:1", "console_port": 0}))
    result = run_cli("--configfile", str(config), *(["--check-config"] if check else []),
                     timeout=30)
    assert result.returncode == EX_CONFIG, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("gearman-driver: "), lines
    assert words in lines[0], lines[0]
    assert f"(at {path}:" in lines[0]
    assert result.stdout == ""
