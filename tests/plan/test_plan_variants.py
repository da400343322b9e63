"""`edgefleet plan` shows, per ring, which build (variant) how many devices get and their bytes, as the devices
themselves choose (edgefleet_agent/variants.py): over each registered local device's hardware, or a cloud group's
hardware profile with the ring's declared size."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from edgefleet.cli import main
from edgefleet.plan.variants import ring_variants
from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.variants import DeviceFacts, choose

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_plan import bump_to_1_1_0, plan_for  # noqa: E402

from tests.variant_entries import variant_entry

ROOT = Path(__file__).resolve().parents[2]
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def manifest_with(variants: list[dict]) -> ModelManifest:
    doc = yaml.safe_load((ROOT / "models" / "detector" / "model.yaml").read_text())
    doc.update(variants=variants, min_agent_version="0.4.0", format=3)
    return ModelManifest.model_validate(doc)


def variant(kind: str, size: int, memory: int, eps: list[str], providers: list[str]) -> dict:
    return variant_entry(kind, sha256=("a" if kind == "int8" else "b") * 64, size=size, eps=eps, memory=memory, providers=providers)


def test_each_kind_of_device_gets_what_it_would_choose_and_the_bytes_add_up():
    m = manifest_with([variant("int8", 1000, 64, [CPU], [CPU]), variant("fp16", 2000, 256, [CUDA, CPU], [CUDA])])
    hardware = {
        ("amd64", (CPU,), 1024): 7,  # fits the reference
        ("amd64", (CPU,), 128): 3,  # too small for the reference (256 MB), fits int8
        ("arm64", (CUDA, CPU), 1024): 2,  # a build for its accelerator
        ("amd64", (CPU,), 32): 1,  # fits nothing
    }
    variants, unfit = ring_variants(m, hardware)
    assert variants == {
        "fp32": {"devices": 7, "bytes": 7 * m.size, "size": m.size},
        "int8": {"devices": 3, "bytes": 3000, "size": 1000},
        "fp16": {"devices": 2, "bytes": 4000, "size": 2000},
    }
    for (arch, providers, memory), _ in list(hardware.items())[:3]:
        kind = choose(m, DeviceFacts("d", arch, providers, memory)).kind
        assert kind in variants, "the plan's choice is the device's own"
    assert unfit is not None and unfit["devices"] == 1 and "fits no build" in unfit["reasons"][0]
    unknown, _ = ring_variants(m, {("arm64", (CUDA, CPU), 1024): None})
    assert unknown == {"fp16": {"devices": None, "bytes": None, "size": 2000}}


def test_the_plan_shows_which_build_each_ring_gets_on_the_local_fleet_and_on_aws(fleet_repo, capsys):
    bump_to_1_1_0(fleet_repo)
    detector = fleet_repo / "models" / "detector"
    for args in (
        ["model", "evaluate", str(detector), "--dataset", str(fleet_repo / "models" / "datasets" / "channel-dominance-eval.yaml")],
        ["model", "variant", "add", str(detector), "--kind", "fp16"],
    ):
        try:
            main(args)
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr()
    fp16 = ModelManifest.model_validate(yaml.safe_load((detector / "model.yaml").read_text())).variant("fp16")
    assert fp16 is not None and fp16.execution_providers[0] == CUDA

    plan, md = plan_for(fleet_repo, stack="aws-dev")  # jetson-orin: CUDA, so the fp16 build made for it
    (rollout,) = plan["rollouts"]
    assert [r["variants"] for r in rollout["rings"]] == [
        {"fp16": {"devices": n, "bytes": n * fp16.size, "size": fp16.size}} for n in (5, 50, 500)
    ]
    assert "| step | ring | selects | devices | cumulative devices | cumulative share | gate | builds (devices, bytes) |" in md
    assert "| fp16 5 (" in md and "| fp16 500 (" in md

    plan, md = plan_for(fleet_repo, stack="local")  # x86 CPU cameras with 1024 MB: the reference
    (rollout,) = plan["rollouts"]
    reference = plan["models"][0]["new"]["size"]
    for ring in rollout["rings"]:
        assert ring["variants"] == {"fp32": {"devices": ring["devices"], "bytes": ring["devices"] * reference, "size": reference}}
    assert "builds (devices, bytes)" not in md, "the column shows only where a ring gets another build than the reference"
