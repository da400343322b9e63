"""Each platform's part of the rules is found through components/registry.py, and the rules load as the CrossGuard
pack's own virtualenv loads them: policies/ as sys.path[0], the standard library only, no project installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from policy_graphs import PI, fleet

from components.registry import PLATFORMS
from policies import platforms
from policies.rules import RULES_BY_NAME, evaluate
from policies.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_platform_has_its_rules_module():
    assert [name for name, _ in platforms.modules()] == list(PLATFORMS)
    for name, module in platforms.modules():
        assert module.__name__ == PLATFORMS[name].policies
        assert set(module.PARTS) <= set(RULES_BY_NAME), f"{module.__name__}.PARTS names rules that do not exist"


def test_the_rules_run_standalone_on_the_standard_library_alone():
    settings = {"azure_sas_expiry": "2026-12-10", "today": "2026-11-25", "production": True}
    code = (
        "import json, sys\n"
        f"sys.path.insert(1, {str(ROOT / 'tests' / 'policy')!r})\n"
        "import rules, settings\n"
        "from policy_graphs import PI, fleet\n"
        f"report = rules.evaluate(fleet(platform='azure', hardware=PI), settings.Settings(**{settings!r}))\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'policies', 'edgefleet', 'pulumi', 'pydantic', 'yaml'})\n"
        "print(json.dumps({'report': report.to_dict(), 'loaded': loaded}))\n"
    )
    # -S: no site-packages, as in a virtualenv that holds only pulumi-policy (which the rules never import).
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT / "policies", capture_output=True, text=True, check=True)
    standalone = json.loads(out.stdout)
    assert standalone["loaded"] == [], "standalone rules imported project or third-party packages"
    assert standalone["report"] == evaluate(fleet(platform="azure", hardware=PI), Settings(**settings)).to_dict()


def test_a_registry_entry_whose_rules_cannot_be_used_names_the_file_the_key_and_the_fix(monkeypatch):
    def entries(**policies):
        return SimpleNamespace(PLATFORMS={name: SimpleNamespace(policies=path) for name, path in policies.items()})

    platforms.modules.cache_clear()
    monkeypatch.setattr(platforms, "registry", lambda: entries(edge="components.edge.rules"))
    with pytest.raises(
        platforms.PlatformRulesError, match=r"components/registry.py: PLATFORMS\['edge'\].policies .* fix: set it to 'policies.edge'"
    ):
        platforms.modules()
    monkeypatch.setattr(platforms, "registry", lambda: entries(edge="policies.edge"))
    with pytest.raises(
        platforms.PlatformRulesError, match=r"PLATFORMS\['edge'\].policies names 'policies.edge'.* fix: create policies/edge.py"
    ):
        platforms.modules()
    monkeypatch.setattr(platforms, "registry", lambda: entries(edge="policies.graph"))
    with pytest.raises(platforms.PlatformRulesError, match=r"policies/graph.py .* lacks stack_settings, exempt, PARTS; fix:"):
        platforms.modules()
    platforms.modules.cache_clear()
