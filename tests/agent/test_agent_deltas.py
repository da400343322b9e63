"""Delta updates on the device (docs/deltas.md): a device holding the previous verified version rebuilds the next one
from a patch published beside the artifact, and trusts the result exactly as a full download. Each attack below costs
the device its patch download and a fallback to the full artifact, never a model it did not verify."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from agent_testkit import SAMPLES, Publisher, artifact_path

import edgefleet_agent.core
from components.delta import make_patch
from components.local.signer import LocalKeySigner, create_key_file
from components.trust.repository import TrustRepository
from components.trust.storage import DirectoryStorage
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.tuf import METADATA_PREFIX, PatchIdentity, TargetIdentity, manifest_digest, patch_uri
from edgefleet_agent.delta import HEADER, METHOD, read_header
from edgefleet_agent.trust import TrustedMetadata


def padded(sample: str, dest: Path, kib: int = 256, seed: int = 7) -> Path:
    """The sample model with `kib` KiB of seeded metadata: two versions share it, as retrained models share their
    unchanged weights, so a patch between them is a small share of the artifact."""
    m = onnx.load(str(SAMPLES / sample))
    m.metadata_props.append(onnx.StringStringEntryProto(key="padding", value=np.random.default_rng(seed).bytes(kib * 512).hex()))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(dest))
    return dest


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def versions(tmp_path_factory, keys):
    """1.0.0 and 1.1.0 that share most of their bytes, and 1.2.0 (another base)."""
    tmp = tmp_path_factory.mktemp("deltas")
    pub = Publisher(tmp / "store", keys)
    out = {}
    for version, sample in (("1.0.0", "detector-1.0.0.onnx"), ("1.1.0", "detector-1.1.0.onnx"), ("1.2.0", "detector-1.2.0-nan.onnx")):
        out[version] = pub.publish(version, str(padded(sample, tmp / "src" / f"{version}.onnx", seed=7 if version != "1.2.0" else 8)))
    return out


def publish_patch(old: DesiredModel, new: DesiredModel, source_old: Path | None = None) -> Path:
    """Writes the patch where a device derives it from the artifact's URI: `patches/` beside the artifact."""
    out = local_path(patch_uri(new.uri, old.sha256, new.sha256, METHOD))
    make_patch(source_old or artifact_path(old), artifact_path(new), out)
    return out


def last_report(agent, transport) -> DeviceReport:
    agent.report()
    return transport.reports[-1]


def install(agent, transport, *desired: DesiredModel) -> None:
    for d in desired:
        transport.desired_model = d
        agent.sync()
        assert agent.current_version == d.version, agent.build_report().error


def test_a_device_on_the_previous_version_takes_the_patch(make_agent, transport, versions, monkeypatch):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    patch = publish_patch(v100, v110)
    agent = make_agent()
    install(agent, transport, v100)
    first = last_report(agent, transport)
    assert first.update == {"path": "full", "bytes": v100.size, "fallback": None}, "nothing served yet: no patch to try"
    install(agent, transport, v110)
    report = last_report(agent, transport)
    assert report.update == {"path": "delta", "bytes": patch.stat().st_size, "fallback": None}
    assert report.update["bytes"] < v110.size / 4
    assert (report.version, report.sha256, report.status, report.error) == ("1.1.0", v110.sha256, "ok", None)
    model_path, _, _ = agent.store.slot_files(agent.store.read_pointer().current.slot)
    assert model_path.read_bytes() == artifact_path(v110).read_bytes()
    assert '"update"' in report.to_json()
    assert '"update"' not in dataclasses.replace(report, update=None).to_json(), "older readers get the bytes they always read"


def test_a_patch_for_another_base_is_rejected_and_the_full_artifact_is_served(make_agent, transport, versions):
    v100, v110, v120 = versions["1.0.0"], versions["1.1.0"], versions["1.2.0"]
    # the attack: the patch the store holds for 1.0.0 -> 1.1.0 replaced by one built from 1.2.0
    publish_patch(v100, v110, source_old=artifact_path(v120))
    agent = make_agent()
    install(agent, transport, v100, v110)
    report = last_report(agent, transport)
    assert report.update["path"] == "full" and report.update["bytes"] == v110.size
    assert report.update["fallback"].startswith("patch refused (base)"), report.update
    assert (report.version, report.sha256, report.error) == ("1.1.0", v110.sha256, None)
    model_path, _, _ = agent.store.slot_files(agent.store.read_pointer().current.slot)
    assert model_path.read_bytes() == artifact_path(v110).read_bytes()


def test_a_patch_that_rebuilds_another_file_under_the_pinned_digest_falls_back(make_agent, transport, versions, tmp_path):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    # the attack: a patch rebuilding a file one byte off 1.1.0, its header forged to claim 1.1.0's digest and size
    evil = bytearray(artifact_path(v110).read_bytes())
    evil[-100] ^= 0xFF
    (tmp_path / "evil.onnx").write_bytes(bytes(evil))
    out = local_path(patch_uri(v110.uri, v100.sha256, v110.sha256, METHOD))
    make_patch(artifact_path(v100), tmp_path / "evil.onnx", out)
    header = read_header(out)
    forged = dataclasses.replace(header, to_sha256=v110.sha256, to_size=v110.size)
    out.write_bytes(forged.pack() + out.read_bytes()[HEADER.size :])
    agent = make_agent()
    install(agent, transport, v100, v110)
    report = last_report(agent, transport)
    assert report.update["path"] == "full"
    assert report.update["fallback"].startswith("patch refused (digest)"), report.update
    assert (report.version, report.sha256, report.error) == ("1.1.0", v110.sha256, None)


def test_a_patch_needing_more_memory_than_the_device_allows_is_not_applied(make_agent, transport, versions):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    publish_patch(v100, v110)
    agent = make_agent(patch_memory_bytes=1 << 20)
    install(agent, transport, v100, v110)
    report = last_report(agent, transport)
    assert report.update["path"] == "full" and report.update["fallback"].startswith("patch refused (memory)")


class Tuf:
    """The store's signed targets, as the publisher writes them, read by the device's TUF client."""

    def __init__(self, tmp: Path, keys, listed: list[DesiredModel]) -> None:
        self.repo = TrustRepository(DirectoryStorage(tmp / "store"), keys.signer)
        self.repo.init([LocalKeySigner(create_key_file(tmp / "root.pem"))], 1)
        self.repo.add_targets([TargetIdentity(d.model, d.version, d.sha256, d.size, manifest_digest(d.manifest.encode())) for d in listed])
        self.tmp = tmp

    def device(self) -> TrustedMetadata:
        metadata = self.tmp / "store" / METADATA_PREFIX
        return TrustedMetadata((metadata / "1.root.json").read_bytes(), metadata.as_uri(), self.tmp / "dev" / "tuf", refresh_seconds=0.0)

    def list_patch(self, old: DesiredModel, new: DesiredModel, patch: Path, sha256: str | None = None) -> None:
        from edgefleet_agent.contract.digest import sha256_file

        digest, size = sha256_file(patch)
        header = read_header(patch)
        refused = self.repo.add_patches(
            [
                PatchIdentity(
                    new.model,
                    METHOD,
                    size,
                    sha256 or digest,
                    old.version,
                    old.sha256,
                    old.size,
                    new.version,
                    new.sha256,
                    new.size,
                    header.memory_needed,
                )
            ]
        )
        assert refused == []


def test_with_update_metadata_a_patch_the_signed_targets_do_not_list_is_ignored(
    make_agent, transport, versions, tmp_path, keys, monkeypatch
):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    publish_patch(v100, v110)  # a valid patch in the store, but not listed in the signed targets
    tuf = Tuf(tmp_path, keys, [v100, v110])
    fetched: list[str] = []
    import edgefleet_agent.core as core

    real = core.download
    monkeypatch.setattr(core, "download", lambda uri, dest, **kw: fetched.append(uri) or real(uri, dest, **kw))
    agent = make_agent(trust=tuf.device())
    install(agent, transport, v100, v110)
    report = last_report(agent, transport)
    assert report.update == {"path": "full", "bytes": v110.size, "fallback": "no signed patch from 1.0.0"}
    assert fetched == [v100.uri, v110.uri], "the unlisted patch is not even downloaded"


def test_with_update_metadata_a_listed_patch_is_checked_by_its_signed_digest(make_agent, transport, versions, tmp_path, keys):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    patch = publish_patch(v100, v110)
    tuf = Tuf(tmp_path, keys, [v100, v110])
    tuf.list_patch(v100, v110, patch)
    agent = make_agent(trust=tuf.device())
    install(agent, transport, v100, v110)
    assert last_report(agent, transport).update == {"path": "delta", "bytes": patch.stat().st_size, "fallback": None}

    # the store's patch swapped after it was signed: refused by its digest before it is applied
    tuf2 = Tuf(tmp_path / "second", keys, [v100, v110])
    tuf2.list_patch(v100, v110, patch, sha256="0" * 64)
    other = make_agent(state_dir=tmp_path / "state2", trust=tuf2.device())
    install(other, transport, v100, v110)
    update = last_report(other, transport).update
    assert update["path"] == "full" and "the signed targets list 000000000000" in update["fallback"], update


def test_revoking_a_version_removes_the_patches_to_and_from_it(versions, tmp_path, keys):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    patch = publish_patch(v100, v110)
    tuf = Tuf(tmp_path, keys, [v100, v110])
    tuf.list_patch(v100, v110, patch)
    assert [p.to_version for p in tuf.repo.patches()] == ["1.1.0"]
    assert tuf.repo.revoke(v110.model, v110.version, v110.sha256, "gate failed")
    assert tuf.repo.patches() == []
    assert tuf.repo.state()["patches"] == {}
    # and it is not listed again
    digest_patch = tuf.repo.add_patches(
        [PatchIdentity(v110.model, METHOD, 1, "a" * 64, v100.version, v100.sha256, v100.size, v110.version, v110.sha256, v110.size, 1)]
    )
    assert len(digest_patch) == 1 and tuf.repo.patches() == []


def test_the_patch_memory_budget_is_an_agent_option(tmp_path):
    from edgefleet_agent.__main__ import parse_args

    common = ["--hub", str(tmp_path / "hub.sqlite"), "--device-id", "d", "--model", "detector", "--public-key", str(tmp_path / "k.pem")]
    common += ["--state-dir", str(tmp_path / "state")]
    assert parse_args(common).patch_memory_mb == 16.0
    assert parse_args([*common, "--patch-memory-mb", "0"]).patch_memory_mb == 0.0  # 0: never use patches
    with pytest.raises(SystemExit):
        parse_args([*common, "--patch-memory-mb", "-1"])


def test_the_patch_download_keeps_to_the_desired_states_cap(make_agent, transport, versions, monkeypatch):
    v100, v110 = versions["1.0.0"], versions["1.1.0"]
    publish_patch(v100, v110)
    calls: list[tuple[str, object]] = []
    real = edgefleet_agent.core.download

    def spy(uri, dest, *args, **kwargs):
        calls.append((uri, kwargs.get("max_bytes_per_second")))
        return real(uri, dest, *args, **kwargs)

    monkeypatch.setattr(edgefleet_agent.core, "download", spy)
    agent = make_agent()
    cap = 50_000_000
    install(agent, transport, dataclasses.replace(v100, max_download_bytes_per_second=cap))
    install(agent, transport, dataclasses.replace(v110, max_download_bytes_per_second=cap))
    assert last_report(agent, transport).update["path"] == "delta"
    assert [rate for _, rate in calls] == [cap, cap], "the full download of 1.0.0 and the patch to 1.1.0, both capped"
    assert "/patches/" in calls[1][0]
