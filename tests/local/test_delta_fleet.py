"""Delta updates on the local fleet end to end (docs/deltas.md): `edgefleet up` publishes, with each version, a patch
from the version its rollout moves devices off, lists it in the signed targets when it is small enough, and devices
holding that version rebuild the new one from it; their reports say so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from components.local.hub import LocalHub
from components.local.up import up
from components.trust.repository import TrustRepository
from components.trust.storage import DirectoryStorage
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.digest import sha256_file
from edgefleet_agent.contract.tuf import patch_path
from edgefleet_agent.delta import METHOD

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"
STORE = Path(".edgefleet") / "local" / "store"


def padded(p: Path, sample: str, name: str) -> Path:
    """The sample with 256 KiB of seeded metadata that consecutive versions share, as retrained models share weights."""
    m = onnx.load(str(SAMPLES / sample))
    m.metadata_props.append(onnx.StringStringEntryProto(key="padding", value=np.random.default_rng(7).bytes(256 * 512).hex()))
    dest = p / "src" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def add(p: Path, artifact: Path, version: str) -> None:
    add_version(p / "models" / "detector", artifact, version, metrics=[parse_metric("accuracy=0.95@eval", set())])


def run(p: Path):
    [outcome] = up(p, "local", synth(p, "local"))
    return outcome


@pytest.mark.slow
def test_devices_on_the_previous_version_take_the_patch(project):
    p = project(devices=4, processes=1)
    stack = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(stack.read_text())
    doc["config"]["edgefleet:delta"] = {"max_share": 0.3}
    stack.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert run(p).status == "succeeded"  # 1.0.0: the small sample
    add(p, padded(p, "detector-1.1.0.onnx", "a.onnx"), "1.1.0")
    assert run(p).status == "succeeded"
    hub = LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")
    second = hub.reports("detector")
    assert {r.version for r in second.values()} == {"1.1.0"}
    # 1.0.0 shares nothing with the padded 1.1.0: its patch (about half the artifact: xz on the hex padding) is over
    # edgefleet:delta.max_share, so none is published
    assert all(r.update["path"] == "full" and r.update["fallback"] == "no signed patch from 1.0.0" for r in second.values()), second
    assert not list((p / STORE / "detector" / "patches").glob(f"*.{METHOD}"))

    add(p, padded(p, "detector-1.0.0.onnx", "b.onnx"), "1.2.0")
    third = run(p)
    assert third.status == "succeeded"
    reports = hub.reports("detector")
    [v110] = [r for r in hub.rollouts("detector") if r["version"] == "1.1.0"]
    patch = p / STORE / patch_path("detector", v110["sha256"], third.progress["sha256"], METHOD)
    assert patch.is_file()
    size = patch.stat().st_size
    assert len(reports) == 4 and {r.version for r in reports.values()} == {"1.2.0"}
    for r in reports.values():  # the simulated devices and the agent process alike
        assert r.update == {"path": "delta", "bytes": size, "fallback": None}, (r.device_id, r.update)
    full = (p / STORE / "detector" / f"{third.progress['sha256']}.onnx").stat().st_size
    assert size < full / 4
    # the patch is a signed target of the store's TUF repository, with its own length and digest
    [signed] = TrustRepository(DirectoryStorage(p / STORE), None).patches()
    assert (signed.from_version, signed.to_version, signed.size, signed.sha256) == ("1.1.0", "1.2.0", size, sha256_file(patch)[0])


def test_under_pulumi_the_artifact_provider_publishes_patches_within_the_stacks_max_share(project, monkeypatch):
    from components.local import providers

    p = project(devices=4, processes=0)
    stack = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(stack.read_text())
    doc["config"]["edgefleet:delta"] = {"max_share": 0.3}
    stack.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(p)

    def create() -> str:
        graph = synth(p, "local")
        art = next(r["inputs"] for r in graph["resources"] if r["name"] == "detector-local-artifact")
        assert art["delta_max_share"] == 0.3
        return providers.ArtifactProvider().create(art).outs["sha256"]

    first = create()  # 1.0.0
    add(p, padded(p, "detector-1.1.0.onnx", "a.onnx"), "1.1.0")
    second = create()
    patches = p / STORE / "detector" / "patches"
    assert not list(patches.glob(f"*.{METHOD}")), "1.0.0 -> 1.1.0 shares nothing: over max_share 0.3, not published"
    assert [f.name for f in patches.iterdir()] == [f"{second}.from-{first}.{METHOD}.too-large"], "remembered, so not built again"
    add(p, padded(p, "detector-1.0.0.onnx", "b.onnx"), "1.2.0")
    third = create()
    published = sorted(f.name for f in patches.glob(f"*.{METHOD}"))
    assert published == [f"{third}.from-{second}.{METHOD}"], "from the newest older versions only (1.0.0's is over the share)"
    assert first != second
