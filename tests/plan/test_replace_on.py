"""Each platform's replace-on tables live in its own folder, are pure data, and are found through the registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.registry import PLATFORMS
from edgefleet.plan import replace
from edgefleet_agent.contract.errors import EdgefleetError

ROOT = Path(__file__).resolve().parents[2]


def test_every_platforms_tables_load_without_pulumi():
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from components.registry import PLATFORMS\n"
        "for entry in PLATFORMS.values():\n"
        "    module = entry.load('replace_on')\n"
        "    assert all(hasattr(module, t) for t in ('REPLACE_ON', 'REPLACE_ALL_BUT', 'IMMUTABLE_BY_NAME')), module.__name__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pydantic', 'edgefleet')))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_tables_are_the_registered_platforms_own():
    tables = replace.replace_tables()
    owners = {name: entry.load("replace_on") for name, entry in PLATFORMS.items()}
    assert set(tables.replace_on) == {t for m in owners.values() for t in m.REPLACE_ON}
    assert all(t.startswith("aws:") for t in owners["aws"].REPLACE_ON)
    assert all(t.startswith("azure-native:") for t in owners["azure"].REPLACE_ON)
    assert tables.immutable("pulumi-python:dynamic/edgefleet-azure:Configuration")["inputs"] == ("content",)


def test_a_platform_without_its_tables_names_the_file_the_key_and_the_fix(monkeypatch):
    entry = SimpleNamespace(replace_on="components.edge.replace_on", load=lambda part: SimpleNamespace(REPLACE_ON={}))
    monkeypatch.setattr(replace, "PLATFORMS", {"edge": entry})
    replace.replace_tables.cache_clear()
    try:
        with pytest.raises(EdgefleetError) as err:
            replace.replace_tables()
    finally:
        replace.replace_tables.cache_clear()
    assert err.value.where == "components/edge/replace_on.py"
    assert "REPLACE_ALL_BUT, IMMUTABLE_BY_NAME" in err.value.problem and "PLATFORMS['edge'].replace_on" in err.value.problem
    assert err.value.fix and "empty where the platform has none" in err.value.fix
