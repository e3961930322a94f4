"""The README's configuration reference is checked against the schema and the defaults."""

from __future__ import annotations

import re
from pathlib import Path

from gearman_driver.config.reading import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES
from gearman_driver.config.settings import DEFAULTS
from gearman_driver.config.validation import schema

README = Path(__file__).parent.parent.parent / "README.md"


def reference_rows() -> dict[str, list[str]]:
    """Rows of the README's key table: key -> [type, default, meaning]."""
    rows = {}
    text = README.read_text()
    section = text[text.index("\n## Configuration"):]
    section = section[:section.index("\n## ", 1)]  # not the metrics table, say
    for line in section.splitlines():
        match = re.match(r"\| `([a-z_]+)` \| (.+?) \| (.+?) \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = [match.group(2), match.group(3), match.group(4)]
    return rows


def test_every_schema_key_is_documented_and_nothing_else() -> None:
    keys = set(schema()["properties"])
    assert set(reference_rows()) == keys
    assert set(DEFAULTS) == keys


def test_documented_defaults_match_the_code() -> None:
    rows = reference_rows()
    for key, value in DEFAULTS.items():
        documented = rows[key][1]
        if value is None or value in ([], {}):
            continue  # shown in words ("none", "stderr", "`[]`")
        shown = f"`{str(value).lower() if isinstance(value, bool) else value}`"
        assert documented.startswith(shown), f"{key}: README says {documented}, code {value!r}"


def test_the_config_reading_limits_are_the_documented_ones() -> None:
    text = " ".join(README.read_text().split())
    assert f"at most {MAX_FILE_BYTES // 1024} KiB" in text
    assert f"at most {MAX_VALUES:,} values once YAML aliases are expanded" in text
    assert f"nested at most {MAX_DEPTH} levels deep" in text


def test_the_readme_journey_has_the_system_tiers_steps() -> None:
    """The README's operator's journey numbers the same steps tests/system walks."""
    journey = (README.parent / "tests" / "system" / "test_journey.py").read_text()
    tested = {int(n) for n in re.findall(r"^def test_(\d+)_", journey, re.M)}
    text = README.read_text()
    section = text[text.index("### The operator's journey"):text.index("### The sandbox")]
    shown = {int(n) for n in re.findall(r"^    # (\d+)\. ", section, re.M)}
    assert tested == shown == set(range(1, 11))
