"""`edgefleet plan` on a real git history: what a reviewer checks in the Markdown comment and the JSON."""

from __future__ import annotations

import copy
import json
import math
import subprocess
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from plan_repo import git

from edgefleet.cli import EXIT_POLICY, main
from edgefleet.model_add import add_version, parse_metric
from edgefleet.plan import base_graph, compute_plan, render_markdown
from edgefleet.plan.diff import diff_resources
from edgefleet.plan.membership import local_devices
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import EdgefleetError

ROOT = Path(__file__).resolve().parents[2]
DATASET = "channel-dominance-eval-v1 (seed 7, 512 images)"


def plan_for(repo: Path, base: str = "main", stack: str = "local") -> tuple[dict, str]:
    plan = compute_plan(base_graph(repo, stack, base), synth(repo, stack), base_ref=base, project_dir=repo)
    return plan, render_markdown(plan)


def cli(repo: Path, capsys, *args: str) -> tuple[int, str]:
    """Runs `edgefleet ARGS` as the console script does; returns (exit code, stdout)."""
    try:
        main([*args, "--project-dir", str(repo)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().out


def local_stack(repo: Path) -> dict:
    return yaml.safe_load((repo / "stacks" / "Pulumi.local.yaml").read_text())["config"]


def bump_to_1_1_0(repo: Path) -> None:
    add_version(
        repo / "models" / "detector",
        repo / "models" / "samples" / "detector-1.1.0.onnx",
        "1.1.0",
        metrics=[parse_metric(f"accuracy=0.9492@{DATASET}", set())],
    )


def test_version_bump(fleet_repo, capsys):
    bump_to_1_1_0(fleet_repo)
    code, md = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main")
    assert code == 0
    cfg = local_stack(fleet_repo)
    count = sum(b["count"] for b in cfg["edgefleet:local"]["devices"])
    rings = cfg["edgefleet:rollouts"][0]["rings"]

    assert "#### `detector` 1.0.0 → 1.1.0" in md
    assert "| version | 1.0.0 | 1.1.0 ✱ |" in md
    assert "| sha256 | `de6313948e98ba28…` |" in md
    assert "**I/O signature: ✅ unchanged**" in md
    assert (
        "| accuracy ↑ | channel-dominance-eval-v1 (seed 7, 512 images) | 0.8613 (declared) | 0.9492 (declared) | +0.0879 improved |" in md
    )
    assert "**Evaluation:** none measured; every metric above is declared (typed in with `edgefleet model add --metric`)." in md
    assert "#### Rollout `detector`: detector 1.0.0 → 1.1.0" in md
    canary = math.ceil(count * rings[0]["percent"] / 100)
    assert f"| 1 | `{rings[0]['name']}` | {rings[0]['percent']}% of group cameras [x86-camera] | {canary} | {canary} |" in md
    assert f"Blast radius of step 1: **{canary} device(s)**" in md
    assert "⚠️ **replace** `pulumi-python:dynamic/edgefleet-local:Artifact` **detector-local-artifact**" in md
    assert "### Policy\n\n✅ passed" in md

    code, text = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main", "--json")
    plan = json.loads(text)
    assert "| step | ring | selects | devices | cumulative devices | cumulative share | gate |" in md
    (model,) = plan["models"]
    assert (model["old"]["version"], model["new"]["version"], model["io"]["verdict"]) == ("1.0.0", "1.1.0", "unchanged")
    assert model["metrics"][0]["verdict"] == "improved"
    (rollout,) = plan["rollouts"]
    steps = [(r["name"], r["devices"], r["cumulative"]) for r in rollout["rings"]]
    assert [s[0] for s in steps] == [r["name"] for r in rings]
    held = rollout.get("control_devices") or 0
    assert held == math.floor(count * cfg["edgefleet:rollouts"][0].get("control_holdback", 0) + 1e-9)
    assert steps[-1][2] + held == count and sum(s[1] for s in steps) + held == count, "every device is in one ring or the holdback"
    assert rollout["rings"][0]["share"] == canary / count
    replaced = {e["name"]: e for e in plan["resources"]["changes"] if e["action"] == "replace"}
    assert set(replaced["detector-local-artifact"]["replace_keys"]) >= {"sha256", "version"}
    assert plan["policy"]["passed"] and plan["policy"]["has_base"]
    assert subprocess.run(["git", "worktree", "list"], cwd=fleet_repo, capture_output=True, text=True).stdout.count("\n") == 1


def breaking_model(path: Path) -> Path:
    """Same task, but the input is now `pixels`, 3x128x128: every caller of `image` breaks."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 128, 128])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["pixels"], ["scores"], axes=[2, 3], keepdims=0)], "detector", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_breaking_io_change(fleet_repo, tmp_path, capsys):
    add_version(
        fleet_repo / "models" / "detector",
        breaking_model(tmp_path / "detector-2.onnx"),
        "2.0.0",
        metrics=[parse_metric(f"accuracy=0.86@{DATASET}", set())],
    )
    plan, md = plan_for(fleet_repo)
    assert "#### `detector` 1.0.0 → 2.0.0" in md
    assert "**I/O signature: ⛔ **breaking**" in md
    assert "⛔ input `image`: removed (was float32[batch, 3, 224, 224])" in md
    assert "⛔ input `pixels`: added (float32[batch, 3, 128, 128]): callers do not feed it" in md
    io = plan["models"][0]["io"]
    assert io["verdict"] == "breaking" and {c["name"] for c in io["changes"] if c["breaking"]} == {"image", "pixels"}
    assert plan["policy"]["blocking"] == ["breaking-io-needs-agent"]
    assert "❌ **blocked**: `breaking-io-needs-agent`" in md and "min_agent_version stays 0.1.0" in md

    code, out = cli(fleet_repo, capsys, "policy", "--stack", "local", "--base", "main")
    assert code == EXIT_POLICY and "blocked" in out and "breaking-io-needs-agent" in out
    code, _ = cli(fleet_repo, capsys, "policy", "--stack", "local")
    assert code == 0, "without --base the I/O change cannot be seen, only the agent version"


def test_ring_added(fleet_repo):
    path = fleet_repo / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    rings = doc["config"]["edgefleet:rollouts"][0]["rings"]
    rings.insert(1, {"name": "pilot", "group": "cameras", "percent": 15, "gate": rings[0]["gate"]})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan, md = plan_for(fleet_repo)

    assert plan["models"] == []
    (rollout,) = plan["rollouts"]
    assert [r["name"] for r in rollout["rings"]] == [r["name"] for r in rings]
    pilot = rollout["rings"][1]
    assert pilot["status"] == "new" and pilot["base_devices"] is None and pilot["devices"] > 0
    after = rollout["rings"][2]
    assert after["status"] == "changed" and "index" in after["changes"] and after["devices"] < after["base_devices"]
    assert "| 2 | `pilot` 🆕 | 15% of group cameras [x86-camera] |" in md
    assert f"(was {after['base_devices']:,})" in md
    assert "The model does not change; the ring layout does." in md
    created = {e["name"] for e in plan["resources"]["changes"] if e["action"] == "create"}
    assert created == {"detector-pilot", "detector-pilot-deployment", "detector-pilot-gate"}
    assert plan["policy"]["passed"]


def test_model_sent_to_hardware_that_cannot_run_it(fleet_repo, capsys):
    """The program accepts it (the rollout's other group fits), the policy does not."""
    path = fleet_repo / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    cfg = doc["config"]
    cfg["edgefleet:groups"].append(
        {
            "name": "gateways",
            "labels": {"site": "plant-b"},
            "hardware": {
                "name": "pi-zero",
                "arch": "armv7",
                "execution_providers": ["CPUExecutionProvider"],
                "memory_mb": 128,
                "storage_mb": 64,
            },
        }
    )
    cfg["edgefleet:local"]["devices"].append({"count": 20, "prefix": "gw", "labels": {"site": "plant-b"}, "arch": "armv7"})
    cfg["edgefleet:rollouts"][0]["rings"].append(
        {"name": "gateways", "group": "gateways", "gate": {"soak_seconds": 4, "deadline_seconds": 60}}
    )
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

    plan, md = plan_for(fleet_repo)
    assert plan["policy"]["blocking"] == ["hardware-can-run-model"]
    assert "ring 'gateways' sends detector 1.0.0 to group 'gateways' (pi-zero), which can run none of its targets" in md
    assert "x86-camera: arch amd64 != armv7" in md
    row = plan["rollouts"][0]["rings"][-1]
    held = math.floor(20 * cfg["edgefleet:rollouts"][0].get("control_holdback", 0) + 1e-9)  # held back from its group too
    assert (row["name"], row["devices"], row["hardware"]) == ("gateways", 20 - held, "pi-zero")
    code, out = cli(fleet_repo, capsys, "policy", "--stack", "local")
    assert code == EXIT_POLICY and "hardware-can-run-model" in out
    code, out = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main")
    assert code == EXIT_POLICY and "❌ **blocked**: `hardware-can-run-model`" in out, "the plan gates CI on its own policy section"


def test_no_change(fleet_repo):
    plan, md = plan_for(fleet_repo)
    assert plan["changed"] is False and plan["models"] == [] and plan["rollouts"] == []
    assert all(v == 0 for v in plan["resources"]["counts"].values())
    assert "**No changes.**" in md and "no device is affected" in md


def test_a_base_that_todays_rules_reject_still_plans_so_the_fixing_pr_can_merge(fleet_repo):
    """The base was declared under older rules; the plan reads its config typed but not re-judged."""
    head = synth(fleet_repo, "local")
    base = copy.deepcopy(head)
    base["config"]["local"]["devices"][0]["execution_providers"] = ["CUDAExecutionProvider"]  # refused at load today
    plan = compute_plan(base, head, base_ref="main", project_dir=fleet_repo)  # raised ConfigError before
    assert plan["changed"] is False and all(v == 0 for v in plan["resources"]["counts"].values())


def test_worktree_is_removed_when_the_base_fails(fleet_repo):
    good = (fleet_repo / "stacks" / "Pulumi.local.yaml").read_text()
    (fleet_repo / "stacks" / "Pulumi.local.yaml").write_text(good.replace("percent: 30", "percent: 3"))  # not cumulative: invalid
    git(fleet_repo, "commit", "--quiet", "-am", "broken base")
    (fleet_repo / "stacks" / "Pulumi.local.yaml").write_text(good)
    with pytest.raises(EdgefleetError) as err:
        base_graph(fleet_repo, "local", "main")
    assert "synth at base" in str(err.value) and "percent" in str(err.value)
    assert git(fleet_repo, "worktree", "list").count("\n") == 1
    assert not (fleet_repo / ".git" / "worktrees").exists() or not any((fleet_repo / ".git" / "worktrees").iterdir())


def test_unknown_base_ref_and_new_stack(fleet_repo):
    with pytest.raises(EdgefleetError, match="--base no-such-branch: no such commit"):
        base_graph(fleet_repo, "local", "no-such-branch")
    (fleet_repo / "stacks" / "Pulumi.local.yaml").rename(fleet_repo / "stacks" / "Pulumi.edge.yaml")
    plan = compute_plan(base_graph(fleet_repo, "edge", "main"), synth(fleet_repo, "edge"), base_ref="main")
    assert plan["base_note"] == "stack edge did not exist at main"
    assert plan["resources"]["counts"]["create"] == len(synth(fleet_repo, "edge")["resources"])
    assert "_stack edge did not exist at main: everything below is new._" in render_markdown(plan)


def test_plan_counts_the_devices_the_local_fleet_registers(fleet_repo):
    from components.local import fleet
    from edgefleet.config import load_stack

    cfg, _ = load_stack(fleet_repo, "local")
    devices = local_devices(cfg)
    assert [(d.id, d.labels) for d in devices] == [(d.id, d.labels) for d in fleet.local_devices(cfg)]
    assert devices[0].id == f"{cfg.local.devices[0].prefix}-0000"


def test_one_run_writes_markdown_and_json_and_synthesizes_the_base_once(fleet_repo, tmp_path, capsys, monkeypatch):
    import edgefleet.plan.base_policy as base_policy

    calls = []
    real = base_policy.synth_subprocess
    monkeypatch.setattr(base_policy, "synth_subprocess", lambda *a, **k: calls.append(a) or real(*a, **k))
    bump_to_1_1_0(fleet_repo)
    md_path, json_path = tmp_path / "plan.md", tmp_path / "plan.json"
    code, out = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "main", "--out", str(md_path), "--json-out", str(json_path))
    assert code == 0 and len(calls) == 1
    assert md_path.read_text() == out and out.startswith("<!-- edgefleet-plan -->")
    plan = json.loads(json_path.read_text())
    assert plan["models"][0]["new"]["version"] == "1.1.0" and render_markdown(plan) + "\n" == out


def test_aws_rings_show_their_declared_sizes_and_blast_radius(fleet_repo):
    """AWS rings select by thing attributes; the plan counts them by `edgefleet:aws.rings.<ring>.devices`, labelled so."""
    bump_to_1_1_0(fleet_repo)
    plan, md = plan_for(fleet_repo, stack="aws-dev")
    declared = yaml.safe_load((fleet_repo / "stacks" / "Pulumi.aws-dev.yaml").read_text())["config"]["edgefleet:aws"]["rings"]
    (rollout,) = plan["rollouts"]
    assert rollout["counted"] == "declared" and rollout["devices"] == 555 and rollout["fleet"] is None
    rows = [(r["name"], r["devices"], r["counted"], r["cumulative"]) for r in rollout["rings"]]
    assert rows == [("canary", 5, "declared", 5), ("early", 50, "declared", 55), ("broad", 500, "declared", 555)]
    assert [r["devices"] for r in rollout["rings"]] == [declared[r["name"]]["devices"] for r in rollout["rings"]]
    assert rollout["rings"][0]["share"] == 5 / 555
    assert "known at deploy" not in md
    assert "555 devices as declared in `edgefleet:aws.rings.<ring>.devices`" in md
    assert "| 1 | `canary` | group cameras where ring=canary [jetson-orin] | 5 (declared) | 5 | 0.9% |" in md
    assert "| 3 | `broad` | group cameras [jetson-orin] | 500 (declared) | 555 | 100% |" in md
    assert "Blast radius of step 1: **5 device(s) (declared)** (0.9% of the rollout's declared devices) for at least 900s" in md


def test_a_declared_ring_size_change_shows_the_rollout(fleet_repo):
    path = fleet_repo / "stacks" / "Pulumi.aws-dev.yaml"
    path.write_text(path.read_text().replace("canary: {devices: 5,", "canary: {devices: 8,"))
    plan, md = plan_for(fleet_repo, stack="aws-dev")
    (rollout,) = plan["rollouts"]
    canary = rollout["rings"][0]
    assert (canary["devices"], canary["base_devices"], canary["status"], canary["changes"]) == (8, 5, "changed", ["devices"])
    assert "| 8 (declared) (was 5) |" in md


def test_a_provider_region_change_replaces_everything_it_manages(fleet_repo):
    path = fleet_repo / "stacks" / "Pulumi.aws-dev.yaml"
    path.write_text(path.read_text().replace("region: eu-west-1", "region: eu-central-1"))
    plan, md = plan_for(fleet_repo, stack="aws-dev")
    changes = plan["resources"]["changes"]
    providers = {e["type"]: e for e in changes if e["type"].startswith("pulumi:providers:")}
    assert set(providers) == {"pulumi:providers:aws", "pulumi:providers:aws-native"}
    assert all(e["action"] == "replace" and e["replace_keys"] == ["region"] for e in providers.values())
    managed = [r for r in synth(fleet_repo, "aws-dev")["resources"] if r["custom"] and r["type"].split(":", 1)[0] in ("aws", "aws-native")]
    by_urn = {e["urn"]: e for e in changes}
    assert managed and all(by_urn[r["urn"]]["action"] == "replace" for r in managed)
    assert all("provider region changed" in by_urn[r["urn"]]["why"] for r in managed)
    assert "⚠️ **replace** `aws:s3/bucket:Bucket` **aws-models-bucket**: provider region changed" in md
    assert "⚠️ **replace** `pulumi:providers:aws` **edgefleet-aws**: region changed" in md


def test_recorded_provider_references_decide_what_a_moved_provider_replaces():
    stack = "urn:pulumi:prod::edgefleet::"

    def res(type_, name, provider=None, **inputs):
        return {
            "urn": f"{stack}{type_}::{name}",
            "type": type_,
            "name": name,
            "custom": True,
            "parent": None,
            "inputs": inputs,
            "options": {"provider": provider} if provider else {},
        }

    east, west = res("pulumi:providers:aws", "east", region="us-east-1"), res("pulumi:providers:aws", "west", region="us-west-2")
    base = [
        east,
        west,
        res("aws:s3/bucket:Bucket", "a", provider=f"{east['urn']}::id-1"),
        res("aws:s3/bucket:Bucket", "b", provider=f"{west['urn']}::id-2"),
        res("aws:s3/bucket:Bucket", "c"),
    ]
    head = [dict(r) for r in base]
    head[0] = {**east, "inputs": {"region": "eu-west-1"}}
    actions = {e["name"]: (e["action"], e["why"]) for e in diff_resources(base, head)}
    assert actions["east"][0] == "replace"
    assert actions["a"] == ("replace", "provider region changed")
    assert "b" not in actions and "c" not in actions, "another provider's and the default provider's resources stay"


def test_a_store_made_public_blocks_the_plan(capsys, monkeypatch):
    """The plan of a change that opens the model store shows the mandatory failure, and `edgefleet plan` exits non-zero."""
    import edgefleet.synth

    base = synth(ROOT, "aws-dev")
    head = copy.deepcopy(base)
    pab = next(r for r in head["resources"] if r["type"] == "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    pab["inputs"]["blockPublicPolicy"] = False
    plan = compute_plan(base, head, base_ref="main", project_dir=ROOT)
    assert plan["changed"] and plan["policy"]["blocking"] == ["store-private-encrypted"]
    (change,) = plan["resources"]["changes"]
    assert (change["name"], change["action"], change["changed"]) == (pab["name"], "update", ["blockPublicPolicy"])
    md = render_markdown(plan)
    assert "❌ **blocked**: `store-private-encrypted`" in md
    assert (
        f"| `store-private-encrypted` | mandatory | ❌ failed | S3 bucket 'aws-models-bucket': public access block {pab['name']!r} leaves blockPublicPolicy off |"
        in md
    )

    monkeypatch.setattr(edgefleet.synth, "synth", lambda *a: head)  # the working tree; the base comes from main's worktree
    code, out = cli(ROOT, capsys, "plan", "--stack", "aws-dev", "--base", "main")
    assert code == EXIT_POLICY and "❌ **blocked**: `store-private-encrypted` · judged by the base's rules and settings" in out
    assert out.strip().replace(" · judged by the base's rules and settings", "") == md.strip()


def test_a_change_the_program_tells_pulumi_to_ignore_is_not_in_the_plan():
    """The thing type keeps `ignore_changes=["properties"]` (a replacement would collide with its fixed name): Pulumi
    keeps the old value, so the plan must not announce a change either."""

    def thing_type(attrs, ignore):
        return {
            "urn": "urn:pulumi:s::p::aws:iot/thingType:ThingType::t",
            "type": "aws:iot/thingType:ThingType",
            "name": "t",
            "custom": True,
            "parent": None,
            "inputs": {"name": "t", "properties": {"searchableAttributes": attrs}},
            "options": {"ignore_changes": ["properties"]} if ignore else {},
        }

    assert diff_resources([thing_type(["ring", "site"], True)], [thing_type(["ring"], True)]) == []
    [entry] = diff_resources([thing_type(["ring", "site"], False)], [thing_type(["ring"], False)])
    assert (entry["action"], entry["replace_keys"]) == ("replace", ["properties"])


def test_plan_shows_measured_vs_declared_and_the_evaluation_set(fleet_repo, capsys):
    from edgefleet.evaluate import evaluate_model

    dataset = fleet_repo / "models" / "datasets" / "channel-dominance-eval.yaml"
    pin = yaml.safe_load(dataset.read_text())["sha256"]
    evaluate_model(fleet_repo / "models" / "detector", dataset)  # 1.0.0, its typed-in accuracy now measured
    plan, md = plan_for(fleet_repo)
    assert "#### `detector` 1.0.0 → 1.0.0" in md and "| min agent | 0.1.0 | 0.3.0 ✱ |" in md
    assert (
        f"| accuracy ↑ | channel-dominance-eval (sha256 {pin[:12]}) (base: channel-dominance-eval-v1 (seed 7, 512 images)) | "
        "0.8613 (declared) | 0.8203 (measured) | -0.041 not comparable (dataset changed) |"
    ) in md
    assert (
        f"**Evaluation:** accuracy measured with onnxruntime {plan['models'][0]['evaluation']['new']['measured_with'].split()[-1]} on "
        f"`channel-dominance-eval` (128 samples, sha256 `{pin[:16]}…`), output `scores`; the base's metrics were declared."
    ) in md
    (row,) = plan["models"][0]["metrics"]
    assert (row["old_how"], row["new_how"], row["verdict"]) == ("declared", "measured", "not comparable (dataset changed)")
    assert plan["models"][0]["evaluation"]["old"] is None and plan["models"][0]["evaluation"]["new"]["dataset_sha256"] == pin
    assert plan["policy"]["passed"], "the local fleet runs agent 0.3.0, which reads evaluation; the sandbox allows declared metrics"

    git(fleet_repo, "commit", "--quiet", "-am", "measured 1.0.0")
    add_version(fleet_repo / "models" / "detector", fleet_repo / "models" / "samples" / "detector-1.1.0.onnx", "1.1.0", dataset=dataset)
    plan, md = plan_for(fleet_repo)
    assert f"| accuracy ↑ | channel-dominance-eval (sha256 {pin[:12]}) | 0.8203 (measured) | 0.9609 (measured) | +0.1406 improved |" in md
    assert "; the base" not in md.split("**Evaluation:**")[1].split("\n")[0], "same set as the base: nothing more to say"
    code, _ = cli(fleet_repo, capsys, "plan", "--stack", "local", "--base", "HEAD")
    assert code == 0


def test_plan_says_when_nothing_was_measured(fleet_repo):
    bump_to_1_1_0(fleet_repo)
    _, md = plan_for(fleet_repo)
    assert "0.8613 (declared) | 0.9492 (declared)" in md and "**Evaluation:** none measured" in md


def test_plan_shows_each_rings_download_cap_and_a_cap_change(fleet_repo):
    """The cap per ring and where it is set, how long a full download takes at it, and a cap too low for the gate's
    deadline flagged (at 10 B/s the sample model takes minutes: the early and broad gates would time out)."""
    path = fleet_repo / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["edgefleet:groups"][0]["max_download_bytes_per_second"] = 10
    doc["config"]["edgefleet:rollouts"][0]["rings"][0]["max_download_bytes_per_second"] = 50_000
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan, md = plan_for(fleet_repo)

    (rollout,) = plan["rollouts"]
    caps = {r["name"]: (r.get("download_cap"), r.get("download_cap_from"), r["changes"]) for r in rollout["rings"]}
    assert caps == {
        "canary": (50_000, "ring", ["download cap"]),
        "early": (10, "group", ["download cap"]),
        "broad": (10, "group", ["download cap"]),
    }
    canary, early = rollout["rings"][0], rollout["rings"][1]
    assert math.isclose(early["download_seconds"], canary["download_seconds"] * 5_000)
    assert (
        "- ring `canary`: each device downloads at most 50,000 B/s (400 kbit/s) (set on the ring); a full download of detector 1.0.0" in md
    )
    canary_line = next(line for line in md.splitlines() if line.startswith("- ring `canary`: each device"))
    assert "time out" not in canary_line
    early_line = next(line for line in md.splitlines() if line.startswith("- ring `early`: each device"))
    assert early_line.startswith("- ring `early`: each device downloads at most 10 B/s (80 bit/s) (set on group cameras)")
    assert "exceeds the gate's deadline_seconds (120): **the gate would time out**" in early_line
    assert "- ring `broad` changed: download cap" in md
    assert "The model and the ring layout do not change; download caps do." in md
    assert plan["policy"]["passed"]
