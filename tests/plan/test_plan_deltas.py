"""`edgefleet plan` on a local stack: per ring, the bytes a version change ships in full and with delta patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from plan_repo import git

from edgefleet.model_add import add_version, parse_metric
from edgefleet.plan import base_graph, compute_plan, render_markdown
from edgefleet.synth import synth

DATASET = "channel-dominance-eval-v1 (seed 7, 512 images)"


def padded(repo: Path, sample: str, name: str) -> Path:
    """The sample with 256 KiB of seeded metadata consecutive versions share, as retrained models share weights."""
    m = onnx.load(str(repo / "models" / "samples" / sample))
    m.metadata_props.append(onnx.StringStringEntryProto(key="padding", value=np.random.default_rng(7).bytes(256 * 512).hex()))
    dest = repo / "src" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def add(repo: Path, artifact: Path, version: str) -> None:
    add_version(repo / "models" / "detector", artifact, version, metrics=[parse_metric(f"accuracy=0.95@{DATASET}", set())])


def plan_for(repo: Path) -> tuple[dict, str]:
    plan = compute_plan(base_graph(repo, "local", "main"), synth(repo, "local"), base_ref="main", project_dir=repo)
    return plan, render_markdown(plan)


def test_a_version_sharing_most_bytes_ships_a_patch_per_device(fleet_repo):
    add(fleet_repo, padded(fleet_repo, "detector-1.1.0.onnx", "a.onnx"), "1.1.0")
    git(fleet_repo, "add", "-A")
    git(fleet_repo, "commit", "--quiet", "-m", "1.1.0")
    add(fleet_repo, padded(fleet_repo, "detector-1.0.0.onnx", "b.onnx"), "1.2.0")
    plan, md = plan_for(fleet_repo)
    (rollout,) = plan["rollouts"]
    delta = rollout["delta"]
    assert delta["state"] == "publishable" and delta["from_version"] == "1.1.0"
    assert 0 < delta["patch_bytes"] < delta["artifact_bytes"] / 4
    for row in rollout["rings"]:
        assert row["bytes_full"] == row["devices"] * delta["artifact_bytes"]
        assert row["bytes_delta"] == row["devices"] * delta["patch_bytes"]
    assert delta["bytes_delta"] == sum(r["bytes_delta"] for r in rollout["rings"]) < delta["bytes_full"] / 4
    assert "Bytes to ship, each device assumed on 1.1.0" in md and "a patch from 1.1.0 that `edgefleet up` will publish" in md
    assert f"`{rollout['rings'][0]['name']}` " in md.split("Bytes to ship")[1]


def test_a_patch_over_max_share_counts_as_the_full_download(fleet_repo):
    # the two small samples share no chunk: the patch is about 95% of the artifact, over the default 0.9
    add(fleet_repo, fleet_repo / "models" / "samples" / "detector-1.1.0.onnx", "1.1.0")
    plan, md = plan_for(fleet_repo)
    (rollout,) = plan["rollouts"]
    assert rollout["delta"]["state"] == "too large"
    assert rollout["delta"]["bytes_delta"] == rollout["delta"]["bytes_full"]
    assert "is over edgefleet:delta.max_share (90%)" in md
