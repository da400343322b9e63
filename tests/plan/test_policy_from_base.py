"""A pull request cannot loosen the rules that judge it: `edgefleet plan` runs the base's rule code with the base's
policy settings on the head's graph. What the change does to the policy is shown under a "weakens policy" banner,
and judges only the changes merged after it (review: CODEOWNERS).

The attack, found before: one PR both set `enforcement: {production-canary-ring: disabled}` and widened the canary to
25%; the base's policy failed it (exit 4), the PR's own plan passed it (exit 0, "✅ passed").
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from plan_repo import git

from edgefleet.cli import EXIT_POLICY, main

ROOT = Path(__file__).resolve().parents[2]


def cli(repo: Path, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([*args, "--project-dir", str(repo)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def edit_local(repo: Path, edit) -> None:
    path = repo / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def with_rules(repo: Path) -> None:
    """The base carries its own rule code, as a real fleet repository does (policies/ and the platform registry)."""
    shutil.copytree(ROOT / "policies", repo / "policies", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "components").mkdir()
    shutil.copy(ROOT / "components" / "__init__.py", repo / "components" / "__init__.py")
    shutil.copy(ROOT / "components" / "registry.py", repo / "components" / "registry.py")


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)


# The sandbox's store, key and declared metrics would fail production's hardening rules; this base waives them on
# purpose, so the canary rule is what the tests watch.
WAIVED = {"metrics-measured": "disabled", "store-private-encrypted": "disabled", "signing-key-not-exportable": "disabled"}


def production(repo: Path) -> None:
    edit_local(
        repo, lambda c: c.update({"edgefleet:policy": {"production": True, "min_canary_soak_seconds": 4, "enforcement": dict(WAIVED)}})
    )


def test_a_pr_that_disables_the_canary_rule_and_widens_the_canary_is_still_blocked(fleet_repo, capsys):
    with_rules(fleet_repo)
    production(fleet_repo)
    commit(fleet_repo, "production stack")

    def loosen(c):
        c["edgefleet:policy"]["enforcement"]["production-canary-ring"] = "disabled"
        c["edgefleet:rollouts"][0]["rings"][0]["percent"] = 25

    edit_local(fleet_repo, loosen)
    code, out, err = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main")
    assert code == EXIT_POLICY, out
    assert "❌ **blocked**: `production-canary-ring` · judged by the base's rules and settings" in out
    assert "covering 25%" in out and "**This change weakens policy.**" in out
    assert "enforcement.production-canary-ring: mandatory → disabled" in out

    code, out, _ = cli(fleet_repo, capsys, "policy", "--stack", "local", "--base", "main")
    assert code == EXIT_POLICY and "judged by base main" in out


def test_a_pr_that_only_changes_policy_settings_plans_under_a_banner_and_exit_0(fleet_repo, capsys):
    with_rules(fleet_repo)
    production(fleet_repo)
    commit(fleet_repo, "production stack")

    def only_policy(c):
        c["edgefleet:policy"].update(production=False, canary_max_share=0.3, min_canary_soak_seconds=1)
        c["edgefleet:policy"]["enforcement"]["metric-floor"] = "advisory"

    edit_local(fleet_repo, only_policy)
    code, out, err = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main")
    assert code == 0, out
    banner = out.split("**This change weakens policy.**")[1].split("CODEOWNERS")[0]
    for item in (
        "production: true → false",
        "canary_max_share: default → 0.3 (looser)",
        "min_canary_soak_seconds: 4 → 1 (looser)",
        "enforcement.metric-floor: mandatory → advisory",
    ):
        assert item in banner, banner
    assert out.index("weakens policy") < out.index("### Policy"), "the banner is at the top"
    assert "this change weakens the policy (4 item(s))" in " ".join(err.split())


def test_the_bases_rule_code_judges_even_a_rule_the_change_deletes(fleet_repo, capsys):
    """The base has a rule this checkout's code lacks (as if the PR deleted it from policies/): it still runs."""
    with_rules(fleet_repo)
    rules = fleet_repo / "policies" / "rules.py"
    rules.write_text(
        rules.read_text()
        + """

def _no_broad(g, s):
    from .engine import Finding
    for ring in g.of_type("edgefleet:rollout:Ring"):
        if ring["inputs"].get("ring") == "broad":
            yield Finding("a ring named broad is not allowed here", ring["urn"])


RULES = (*RULES, Rule("no-ring-named-broad", "No ring is named broad", MANDATORY, _no_broad))
RULES_BY_NAME = {r.name: r for r in RULES}
"""
    )
    commit(fleet_repo, "a rule of this fleet's own")
    code, out, _ = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main")
    assert code == EXIT_POLICY and "`no-ring-named-broad`" in out and "a ring named broad is not allowed here" in out
    assert "rule removed: no-ring-named-broad" in out


def test_a_new_stack_is_judged_by_the_default_policy_and_flagged(fleet_repo, capsys):
    with_rules(fleet_repo)
    commit(fleet_repo, "rules")
    shutil.copy(fleet_repo / "stacks" / "Pulumi.local.yaml", fleet_repo / "stacks" / "Pulumi.edge.yaml")
    edit_local(fleet_repo, lambda c: None)
    code, out, _ = cli(fleet_repo, capsys, "plan", "--stack", "edge", "--base", "main")
    assert code == 0 and "stack added: no base policy judged it before; the defaults judge it now" in out
