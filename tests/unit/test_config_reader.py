"""The config is read in a short-lived process: same Settings, same one-line errors, and the
master's interpreter never imports what only reading needs (ruamel.yaml, jsonschema)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gearman_driver.config.reader import read_settings
from gearman_driver.config.settings import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "gearman-driver" / "config.yml"


def test_the_reader_gives_what_loading_in_process_gives(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yml"
    extra.write_text("interval: 3\njob_runtime_attributes:\n  a.b: {max_processes: 4}\n")
    files = [str(EXAMPLE), str(extra)]
    overrides = {"loglevel": "DEBUG"}
    assert read_settings(files, overrides) == load_settings(files, overrides)


def test_a_mistake_is_the_same_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("server: localhost\ninterval: soon\n")
    with pytest.raises(ConfigError) as in_process:
        load_settings([str(bad)])
    with pytest.raises(ConfigError) as apart:
        read_settings([str(bad)])
    assert str(apart.value) == str(in_process.value)
    assert str(apart.value).startswith(f"{bad}:2:")


def test_the_reading_modules_stay_out_of_the_master(tmp_path: Path) -> None:
    """What the CLI and a reload import, plus a read: no YAML or schema library is loaded."""
    config = tmp_path / "c.yml"
    config.write_text(json.dumps({"server": "127.0.0.1:4730", "interval": 2}))
    code = (
        "import sys\n"
        "import gearman_driver.cli, gearman_driver.master.driver, gearman_driver.master.reload\n"
        "from gearman_driver.config.reader import read_settings\n"
        f"assert read_settings([{str(config)!r}]).interval == 2\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('ruamel', 'jsonschema', 'referencing'))\n"
        "print(' '.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
