"""`edgefleet up` makes the hub's rings run what is declared: an older declaration is a staged rollback under a
signed rollback order, a version a gate rejected is refused with the fix, and an unfinished rollout is never
superseded. Real agents (simulated in-process) on a 12-device fleet with half-second soaks: a run takes a second or two."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.local.fleet import exclusive, lock_path
from components.local.hub import LocalHub
from components.local.up import declared_state, up
from components.rollout.types import RingTarget
from edgefleet.cli import EXIT_INPUT, main
from edgefleet.cli.fleet import outcome_line
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError
from edgefleet_agent.contract.state import DesiredModel

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


class Versions:
    """Declares model versions in a project copy: `add` records a new one, `declare` puts a recorded one back."""

    def __init__(self, project_dir: Path) -> None:
        self.dir = project_dir / "models" / "detector"
        self.saved = project_dir.parent / f"{project_dir.name}-versions"
        self._save("1.0.0")

    def _save(self, version: str) -> None:
        shutil.copytree(self.dir, self.saved / version)

    def add(self, sample: str, version: str) -> None:
        add_version(self.dir, SAMPLES / sample, version, metrics=[parse_metric("accuracy=0.95@eval", set())])
        self._save(version)

    def declare(self, version: str) -> None:
        shutil.rmtree(self.dir)
        shutil.copytree(self.saved / version, self.dir)


def run(p: Path, **kw):
    [outcome] = up(p, "local", synth(p, "local"), **kw)
    return outcome


def hub(p: Path) -> LocalHub:
    return LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")


def reported(p: Path) -> set[str | None]:
    return {r.version for r in hub(p).reports("detector").values()}


def rings(p: Path) -> dict[str, tuple[str, bool]]:
    return {s["ring"]: (s["desired"].version, s["desired"].is_rollback) for s in hub(p).ring_states()}


def cli(*args: str, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def fleet(project):
    p = project(devices=12, processes=0, soak=0.5)
    return p, Versions(p)


def test_declaring_an_older_version_rolls_every_ring_back_to_it_under_a_signed_order(fleet, capsys):
    p, versions = fleet
    assert run(p).status == "succeeded"
    versions.add("detector-1.1.0.onnx", "1.1.0")
    assert run(p).status == "succeeded"
    assert reported(p) == {"1.1.0"}

    versions.declare("1.0.0")
    [state] = declared_state(p, "local", synth(p, "local"))
    assert (state["declared"], state["set_to"], state["in_sync"], state["kind"]) == ("1.0.0", ["1.1.0"], False, "rollback")
    assert "rolls back to it ring by ring" in state["next"]
    code, out = cli("status", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    assert code == 0 and "declared detector 1.0.0; rings set to 1.1.0; devices run 1.1.0×12" in " ".join(out.split())

    back = run(p)
    assert (back.status, back.kind, back.from_version, back.to_version) == ("succeeded", "rollback", "1.1.0", "1.0.0")
    assert reported(p) == {"1.0.0"}, "every device must run the declared version"
    assert rings(p) == {"canary": ("1.0.0", True), "early": ("1.0.0", True), "broad": ("1.0.0", True)}
    assert [r["state"] for r in back.progress["rings"]] == ["passed"] * 3, "a declared rollback is staged and gated like any rollout"
    assert back.progress["rollout_id"].startswith("detector@1.0.0+") and "~from-1.1.0+" in back.progress["rollout_id"]

    assert run(p).status == "up-to-date"
    [state] = declared_state(p, "local", synth(p, "local"))
    assert state["in_sync"] and state["running"] == {"1.0.0": 12}

    versions.declare("1.1.0")
    again = run(p)
    assert (again.status, again.kind, again.from_version) == ("succeeded", "forward", "1.0.0")
    assert again.progress["rollout_id"].endswith("#2"), "a second rollout of one artifact gets its own record"
    assert reported(p) == {"1.1.0"}


def test_a_version_a_gate_rolled_back_is_refused_with_the_fix_and_not_redeployed(fleet, capsys):
    p, versions = fleet
    assert run(p).status == "succeeded"
    versions.add("detector-1.2.0-nan.onnx", "1.2.0")
    assert run(p).status == "rolled_back"
    before = hub(p).rollouts("detector")
    desired_before = rings(p)

    again = run(p)
    assert again.status == "previously-rolled-back"
    assert "failed the gate of ring 'canary'" in again.problem and "invalid (NaN/Inf) outputs" in again.problem
    assert "--version 1.2.1" in again.fix and "declare the version the rings run (1.0.0)" in again.fix
    assert hub(p).rollouts("detector") == before and rings(p) == desired_before, "nothing may be deployed again"

    code, out = cli("up", "--stack", "local", "--project-dir", str(p), capsys=capsys)
    text = " ".join(out.split())
    assert code == EXIT_INPUT and "previously-rolled-back" in text and "fix: if the cause is fixed" in text

    versions.declare("1.0.0")
    assert run(p).status == "up-to-date", "going back to what the rings run is in sync at once"


class Killed(Exception):
    pass


def killed_after_canary(p: Path, versions: Versions) -> None:
    """1.0.0 everywhere, then 1.1.0's `edgefleet up` stopped once the canary passed: a rollout left in flight."""
    assert run(p).status == "succeeded"
    versions.add("detector-1.1.0.onnx", "1.1.0")
    with pytest.raises(Killed):
        run(p, on_update=kill_after_canary)


def test_an_unfinished_rollout_is_not_superseded_and_resumes_when_declared_again(fleet):
    p, versions = fleet
    killed_after_canary(p, versions)
    in_flight = hub(p).rollouts("detector")[-1]
    assert in_flight["status"] == "running" and rings(p)["canary"][0] == "1.1.0"

    versions.add("detector-1.2.0-nan.onnx", "1.2.0")
    refused = run(p)
    assert refused.status == "refused"
    assert f"rollout {in_flight['rollout_id']}" in refused.problem and "still in flight" in refused.problem
    assert refused.fix.startswith("declare detector 1.1.0 again")
    assert hub(p).rollouts("detector")[-1]["status"] == "running", "the unfinished rollout must not be marked superseded"
    assert hub(p).ever_served("detector", "1.2.0") == []

    versions.declare("1.1.0")
    resumed = run(p)
    assert (resumed.status, resumed.progress["rollout_id"]) == ("succeeded", in_flight["rollout_id"])
    assert any(e["event"] == "resumed" for e in resumed.progress["events"])
    assert reported(p) == {"1.1.0"}


def test_a_declared_rollback_from_rings_on_several_newer_versions_is_refused(fleet):
    """A rollback order names the one version it moves devices off; rings left on several newer ones cannot get one."""
    p, versions = fleet
    assert run(p).status == "succeeded"
    versions.add("detector-1.1.0.onnx", "1.1.0")
    assert run(p).status == "succeeded"
    state = hub(p)
    canary = next(s for s in state.ring_states() if s["ring"] == "canary")
    first = next(r for r in state.rollouts("detector") if r["version"] == "1.0.0")
    state.set_desired(RingTarget("detector", "canary", 0, tuple(canary["devices"])), DesiredModel.from_json(first["desired"]))
    versions.declare("1.0.0")
    manifest = versions.dir / "model.yaml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 0.9.0"))
    outcome = run(p)
    assert outcome.status == "refused" and "older than what the rings run (canary 1.0.0, early 1.1.0, broad 1.1.0)" in outcome.problem
    assert "declare the newest of them" in outcome.fix


def test_two_ups_on_one_hub_the_second_fails_naming_the_lock_the_holder_and_the_fix(fleet):
    p, _ = fleet
    lock = lock_path(p / ".edgefleet" / "local" / "hub.sqlite", "up")
    with exclusive(lock, "held by the test", "n/a"):
        with pytest.raises(EdgefleetError) as err:
            run(p)
    text = str(err.value)
    assert str(lock) in text and "another `edgefleet up --stack local` is rolling out on this hub" in text
    import os

    assert f"pid {os.getpid()}" in text and "resumes where it stood" in text
    assert run(p).status == "succeeded", "the lock is released with its holder"


def test_up_beside_a_pulumi_gate_driving_the_same_rollout_is_refused_by_the_hubs_lease(fleet):
    """`edgefleet up` and `pulumi up --stack local` hold different file locks, so the rollout's lease in the hub
    is what keeps them from driving the same rings at once."""
    p, _ = fleet
    with hub(p).lease("detector", owner="pulumi up (ring gate)"):
        with pytest.raises(EdgefleetError) as err:
            run(p)
    assert "pulumi up (ring gate)" in str(err.value) and "hub.sqlite" in str(err.value)
    assert run(p).status == "succeeded", "released with its holder"


# -- rings appended, changed, and the way back after a kill ---------------------------------------------------
def edit_stack(p: Path, change) -> None:
    path = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def append_ring(p: Path, name: str = "lab", count: int = 4, **gate) -> None:
    """A ring of new devices (a batch and a group of their own) after the stack's last ring."""

    def change(c):
        c["edgefleet:local"]["devices"].append({"count": count, "prefix": name, "labels": {"site": name}, "processes": 0})
        c["edgefleet:groups"].append(
            {"name": name, "labels": {"site": name}, "hardware": copy.deepcopy(c["edgefleet:groups"][0]["hardware"])}
        )
        rings = c["edgefleet:rollouts"][0]["rings"]
        rings.append({"name": name, "group": name, "gate": {**rings[-1]["gate"], **gate}})

    edit_stack(p, change)


def kill_after_canary(progress):
    if progress["rings"][0]["state"] == "passed":
        raise Killed


def test_a_ring_appended_to_a_succeeded_rollout_reopens_it_and_only_the_new_ring_is_deployed_and_gated(fleet):
    p, _ = fleet
    first = run(p)
    assert first.status == "succeeded"
    set_at = {s["ring"]: s["set_at"] for s in hub(p).ring_states()}
    append_ring(p)
    [state] = declared_state(p, "local", synth(p, "local"))
    assert state["action"] == "resume" and "appends rings lab" in state["next"] and "reopens it" in state["next"]

    again = run(p)
    assert (again.status, again.reopened, again.progress["rollout_id"]) == ("succeeded", ("lab",), first.progress["rollout_id"])
    assert [r["rollout_id"] for r in hub(p).rollouts("detector")] == [first.progress["rollout_id"]], "no second attempt"
    assert {k: v for k, v in ((s["ring"], s["set_at"]) for s in hub(p).ring_states()) if k in set_at} == set_at, (
        "an earlier ring was redeployed"
    )
    keys = ("state", "deployed_at", "soak_started", "finished_at")
    assert [{k: r[k] for k in keys} for r in again.progress["rings"][:3]] == [{k: r[k] for k in keys} for r in first.progress["rings"]]
    reopened_at = next(i for i, e in enumerate(again.progress["events"]) if e["event"] == "reopened")
    assert {e["ring"] for e in again.progress["events"][reopened_at:]} <= {None, "lab"}, "an earlier ring was soaked again"
    assert [r["state"] for r in again.progress["rings"]] == ["passed"] * 4
    assert reported(p) == {"1.0.0"} and len(hub(p).reports("detector")) == 16
    assert "reopened for appended ring lab" in outcome_line(again)
    assert run(p).status == "up-to-date"


def test_a_failing_appended_ring_rolls_the_reopened_rollout_back_to_the_version_before_it(fleet):
    p, versions = fleet
    assert run(p).status == "succeeded"
    versions.add("detector-1.1.0.onnx", "1.1.0")
    good = run(p)
    assert good.status == "succeeded"
    append_ring(p, max_p99_latency_ms=0.001)

    bad = run(p)
    report = bad.progress["report"]
    assert (bad.status, bad.progress["rollout_id"], bad.reopened) == ("rolled_back", good.progress["rollout_id"], ("lab",))
    assert report["failed_ring"] == "lab" and "p99 latency" in report["reasons"][0]
    assert report["rolled_back_to"] == "1.0.0", "the rollback target is the version before, never the reopened version itself"
    assert rings(p) == {r: ("1.0.0", True) for r in ("canary", "early", "broad", "lab")}
    assert reported(p) == {"1.0.0"} and len(hub(p).reports("detector")) == 16
    assert run(p).status == "previously-rolled-back", "a version a gate rejected is not deployed again"


def test_a_failing_ring_appended_to_a_first_rollout_rolls_it_back_to_nothing(fleet):
    p, _ = fleet
    assert run(p).status == "succeeded"
    append_ring(p, max_p99_latency_ms=0.001)
    bad = run(p)
    assert (bad.status, bad.progress["report"]["failed_ring"], bad.progress["report"]["rolled_back_to"]) == ("rolled_back", "lab", None)
    assert {s["ring"]: s["desired"] for s in hub(p).ring_states()} == dict.fromkeys(("canary", "early", "broad", "lab"))
    assert reported(p) == {None}, "no device keeps serving a version a gate rejected"


def test_after_a_kill_and_a_newer_declaration_the_refusal_restores_the_unfinished_version_from_the_store(fleet):
    """`model add` cannot go back below the manifest's version, so the refusal's fix copies the unfinished one back
    from the local store, resumes it, then puts the newer declaration back: commands that work as written."""
    p, versions = fleet
    killed_after_canary(p, versions)
    in_flight = hub(p).rollouts("detector")[-1]
    versions.add("detector-1.2.0-nan.onnx", "1.2.0")
    with pytest.raises(EdgefleetError, match="not newer than the manifest's 1.2.0"):
        versions.add("detector-1.1.0.onnx", "1.1.0")

    refused = run(p)
    assert refused.status == "refused" and refused.fix.startswith("declare detector 1.1.0 again")
    store = p / ".edgefleet" / "local" / "store" / "detector"
    restore, put_back = re.findall(r"`(cp [^`]+)`", refused.fix)
    assert f"{store / in_flight['sha256']}.yaml" in restore and f"{store / in_flight['sha256']}.onnx" in restore
    assert "run `edgefleet up --stack local`" in refused.fix

    subprocess.run(restore, shell=True, check=True, cwd="/")
    resumed = run(p)
    assert (resumed.status, resumed.progress["rollout_id"]) == ("succeeded", in_flight["rollout_id"])
    assert reported(p) == {"1.1.0"}
    subprocess.run(put_back, shell=True, check=True, cwd="/")
    newer = run(p)
    assert (newer.to_version, newer.status, newer.from_version) == ("1.2.0", "rolled_back", "1.1.0")


def test_rings_of_a_rollout_in_flight_can_be_appended_but_not_removed_or_renamed_and_up_says_so_before_the_fleet_starts(fleet):
    p, versions = fleet
    killed_after_canary(p, versions)
    stack = (p / "stacks" / "Pulumi.local.yaml").read_text()
    before = (hub(p).ring_states(), hub(p).rollouts("detector"))

    def rename(c):
        c["edgefleet:rollouts"][0]["rings"][1]["name"] = "middle"

    def remove(c):
        del c["edgefleet:rollouts"][0]["rings"][1]

    for change in (rename, remove):
        edit_stack(p, change)
        fleets = []
        with pytest.raises(ConfigError) as err:
            run(p, on_fleet=fleets.append)
        text = " ".join(str(err.value).split())
        assert "stacks/Pulumi.local.yaml" in text
        assert "rings cannot be removed, renamed or reordered while a rollout is in flight" in text
        assert "restore the rings ['canary', 'early', 'broad']" in text
        assert fleets == [] and (hub(p).ring_states(), hub(p).rollouts("detector")) == before, "nothing may be touched"
        (p / "stacks" / "Pulumi.local.yaml").write_text(stack)

    append_ring(p)
    resumed = run(p)
    assert (resumed.status, resumed.progress["rollout_id"]) == ("succeeded", before[1][-1]["rollout_id"])
    assert [r["name"] for r in resumed.progress["rings"]] == ["canary", "early", "broad", "lab"]
    assert reported(p) == {"1.1.0"} and len(hub(p).reports("detector")) == 16


def test_abort_rolls_a_rollout_left_in_flight_back_and_unblocks_the_next_version(fleet, capsys):
    """The way out that needs no old files: `edgefleet up --abort REASON` takes the rings the unfinished rollout
    reached back to its previous version under a signed order; the next declared version then rolls out."""
    p, versions = fleet
    killed_after_canary(p, versions)
    in_flight = hub(p).rollouts("detector")[-1]
    versions.add("detector-1.1.0.onnx", "1.2.0")  # moved on; 1.1.0's files are gone from models/
    refused = run(p)
    assert refused.status == "refused" and "`edgefleet up --stack local --abort REASON`" in refused.fix

    code, out = cli("up", "--stack", "local", "--project-dir", str(p), "--abort", "1.1.0 leaks memory", capsys=capsys)
    assert code == 0, out
    record = next(r for r in hub(p).rollouts("detector") if r["rollout_id"] == in_flight["rollout_id"])
    assert record["status"] == "rolled_back" and record["report"]["reasons"] == ["aborted by the operator: 1.1.0 leaks memory"]
    assert reported(p) == {"1.0.0"} and all(is_rollback for _, is_rollback in (rings(p)[r] for r in record["report"]["rolled_back_rings"]))
    code, out = cli("up", "--stack", "local", "--project-dir", str(p), "--abort", "again", capsys=capsys)
    assert code == 0 and "nothing in flight to abort" in out

    newer = run(p)
    assert (newer.status, newer.from_version, newer.to_version) == ("succeeded", "1.0.0", "1.2.0")
