"""The threat model of update metadata (TUF), one test per attack: what the attacker does and what the device refuses.

Set-up shared by every test: the stack's repository (components/trust/) is written by the publisher; devices read a
*channel*, a copy of the repository that the attacker controls (a mirror, a CDN, a hub table, a man in the middle),
so each attack is done to the channel, never to the publisher's own files. The device is the real DeviceAgent with
python-tuf's ngclient (edgefleet_agent/trust.py). docs/signing.md ("Update metadata") states the same model.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from agent_testkit import MODEL
from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp

from components.local.signer import LocalKeySigner, create_key_file
from components.trust.repository import Expiry, TrustError, TrustRepository, utcnow
from components.trust.signer import MetadataSigner
from components.trust.storage import DirectoryStorage
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest
from edgefleet_agent.trust import NOT_A_TARGET, MetadataRefused, TrustedMetadata
from tests.trust_races import (
    V1,
    V2,
    V3,
    Interleaved,
    both_add_from_one_version,
    device_lists,
    fillers,
    listed,
    refresh_never_moves_the_timestamp_back,
    slower_publisher_overwrites_a_newer_timestamp,
    swap_refuses_a_stale_tag,
    timestamp_of,
)
from tests.trust_races import path as race_path
from tests.trust_races import version as race_version


def ident(d: DesiredModel) -> TargetIdentity:
    return TargetIdentity(d.model, d.version, d.sha256, d.size, manifest_digest(d.manifest.encode()))


class World:
    """The publisher's repository, the channel devices read, and the keys (the attacker may hold some)."""

    def __init__(self, tmp: Path, keys, root_keys: int = 1, threshold: int = 1) -> None:
        self.tmp = tmp
        self.online = keys.signer
        self.roots = [LocalKeySigner(create_key_file(tmp / f"root-{i}.pem")) for i in range(root_keys)]
        self.repo = TrustRepository(DirectoryStorage(tmp / "store"), self.online)
        self.repo.init(self.roots, threshold)
        self.channel = tmp / "channel"
        self.sync()

    def sync(self) -> None:
        """The channel serves what the publisher wrote."""
        shutil.copytree(self.tmp / "store" / "tuf" / "metadata", self.channel, dirs_exist_ok=True)

    def first_root(self) -> bytes:
        return (self.channel / "1.root.json").read_bytes()

    def trust(self, name: str = "dev-1") -> TrustedMetadata:
        return TrustedMetadata(self.first_root(), self.channel.as_uri(), self.tmp / name / "tuf", refresh_seconds=0.0)

    def write(self, name: str, md: Metadata) -> None:
        (self.channel / name).write_bytes(md.to_bytes())

    def channel_md(self, name: str) -> Metadata:
        return Metadata.from_bytes((self.channel / name).read_bytes())


@pytest.fixture
def world(tmp_path, keys) -> World:
    return World(tmp_path, keys)


@pytest.fixture
def installed(world, make_agent, transport, v100, v110):
    """A device serving 1.1.0 (1.0.0 and 1.1.0 are signed targets), metadata verified."""
    world.repo.add_targets([ident(v100), ident(v110)])
    world.sync()
    agent = make_agent(trust=world.trust())
    transport.desired_model = v110
    agent.sync()
    assert agent.current_version == "1.1.0", agent.build_report().error
    return agent


def refused(agent, transport, desired) -> str:
    transport.desired_model = desired
    agent.sync()
    report = agent.build_report()
    assert report.status == "failed" and report.failed_version == desired.version, report
    return report.error or ""


def test_replay_of_a_rejected_version_is_refused_once_it_is_revoked(world, installed, transport, v120_nan, v110):
    """Attack: a version a gate rejected stays validly signed (manifest signature, old desired state); the attacker
    writes its old desired state into the device's channel again.
    Refusal: the publisher removed it from the signed targets when the gate rolled it back, so the device refuses it as
    "not in the signed targets: revoked or never published", and keeps serving 1.1.0."""
    world.repo.add_targets([ident(v120_nan)])
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate of ring 'canary' failed: NaN outputs")
    world.sync()
    error = refused(installed, transport, v120_nan)
    assert NOT_A_TARGET in error and "1.2.0" in error
    assert installed.current_version == "1.1.0"


def test_a_revoked_version_replayed_as_a_shadow_candidate_is_not_run_and_serving_goes_on(world, installed, transport, v120_nan, v110):
    """Attack: the rejected version's desired state is replayed as the candidate a ring shadows (a shadow phase's
    desired state), so the device would download it and run it on its applications' requests.
    Refusal: a candidate is verified like an install, the signed targets included: it is never loaded, the device
    keeps serving 1.1.0 (status ok) and its report names the refused candidate."""
    import dataclasses

    world.repo.add_targets([ident(v120_nan)])
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate of ring 'canary' failed: NaN outputs")
    world.sync()
    transport.desired_model = dataclasses.replace(v110, shadow=v120_nan)
    installed.sync()
    report = installed.build_report()
    assert installed.shadow_runner is None, "the revoked candidate is not run"
    assert (report.version, report.status) == ("1.1.0", "ok")
    assert "shadow candidate detector 1.2.0 refused" in report.error and NOT_A_TARGET in report.error


def test_a_validly_signed_version_that_was_never_published_is_refused(world, installed, transport, publisher):
    """Attack: someone with the manifest signing key (a leaked CI key) signs a model and writes its desired state into
    the channel, without going through the publisher (no rollout, no gate).
    Refusal: its manifest signature verifies, but it is not in the signed targets: "revoked or never published"."""
    rogue = publisher.publish("1.3.0", "detector-1.1.0.onnx")
    assert NOT_A_TARGET in refused(installed, transport, rogue) and installed.current_version == "1.1.0"


def test_freeze_is_detected_once_the_timestamp_expires_and_serving_goes_on(tmp_path, keys, make_agent, transport, v100, v110):
    """Attack: the channel keeps serving the same metadata forever (a frozen mirror), hiding a revocation or a fix.
    Refusal: the timestamp expires (a day in production, 2 seconds here); the device then reports "metadata stale since
    …" while it keeps serving its verified model, and refuses new installs until fresh metadata arrives."""
    world = World(tmp_path, keys)
    world.repo.expiry = Expiry(timestamp=timedelta(seconds=2))
    world.repo.add_targets([ident(v100), ident(v110)])
    world.sync()
    agent = make_agent(trust=world.trust())
    transport.desired_model = v100
    agent.sync()
    assert agent.current_version == "1.0.0" and agent.build_report().error is None
    time.sleep(2.5)  # the channel freezes: nobody re-signs the timestamp, and the one it serves expires
    agent.sync()  # every sync polls: the held timestamp expired, the channel has none fresher
    report = agent.build_report()
    assert report.status == "ok" and report.version == "1.0.0", "expiry must never stop serving"
    assert report.error and report.error.startswith("metadata stale since ") and "timestamp expired at" in report.error, report
    error = refused(agent, transport, v110)
    assert error.startswith("metadata stale since ") and agent.current_version == "1.0.0"
    # the publisher refreshes (edgefleet up, a gate, or the scheduled `edgefleet trust refresh`): the device recovers
    world.repo.expiry = Expiry()
    world.repo.refresh()
    world.sync()
    agent.clock.now += 3600  # past the retry back-off of the refused install
    agent.sync()
    assert agent.current_version == "1.1.0" and agent.build_report().error is None


def test_rollback_of_metadata_is_refused(world, installed, transport, v120_nan, v110):
    """Attack: the channel serves an older, validly signed timestamp (and the snapshot and targets it names), from
    before a revocation, so the revoked version looks published again.
    Refusal: the device holds a newer timestamp and refuses to go back: "metadata rollback refused"."""
    world.repo.add_targets([ident(v120_nan)])
    world.sync()
    old_timestamp = (world.channel / "timestamp.json").read_bytes()
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate failed")
    world.sync()
    transport.desired_model = v110
    installed.sync()  # (already serving 1.1.0: nothing to install)
    assert NOT_A_TARGET in refused(installed, transport, v120_nan)  # the device has seen the revocation
    (world.channel / "timestamp.json").write_bytes(old_timestamp)
    installed.clock.now += 3600
    error = refused(installed, transport, dataclasses.replace(v120_nan, rollout="replayed"))
    assert error.startswith("metadata rollback refused") and "timestamp" in error, error
    assert installed.current_version == "1.1.0"


def test_mix_and_match_of_metadata_is_refused(world, installed, transport, v120_nan):
    """Attack: the channel combines metadata from different repository states: the current timestamp and snapshot,
    but under the targets file the snapshot names it serves an older targets file (one that still lists 1.2.0).
    Refusal: the snapshot pins the targets version, so the device refuses the mix: "metadata mix-and-match refused"."""
    world.repo.add_targets([ident(v120_nan)])
    world.sync()
    listed = world.channel_md("targets.json")
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate failed")
    world.sync()
    current = world.channel_md("targets.json").signed.version
    world.write(f"{current}.targets.json", listed)  # the older targets, under the name the current snapshot pins
    error = refused(installed, transport, v120_nan)
    assert error.startswith("metadata mix-and-match refused") and f"v{current}" in error, error


def test_key_compromise_below_the_root_threshold_cannot_replace_the_root(tmp_path, keys, make_agent, transport, v100, v110, v120_nan):
    """Attack: one of three root keys (threshold 2) and the channel are compromised; the attacker signs a new root that
    names their own online key, and targets listing a version of their choice (here the rejected 1.2.0).
    Refusal: a new root must be signed by the previous root's threshold: the device refuses it ("metadata signature
    refused") and refuses the version; the publisher itself cannot be tricked into writing such a root either. A root
    signed by two of the three keys is followed."""
    world = World(tmp_path, keys, root_keys=3, threshold=2)
    world.repo.add_targets([ident(v100), ident(v110)])
    world.sync()
    agent = make_agent(trust=world.trust())
    transport.desired_model = v110
    agent.sync()
    assert agent.current_version == "1.1.0"

    attacker = LocalKeySigner(create_key_file(tmp_path / "attacker.pem"))
    evil = TrustRepository(DirectoryStorage(tmp_path / "evil"), attacker)
    shutil.copytree(world.tmp / "store" / "tuf" / "metadata", tmp_path / "evil" / "tuf" / "metadata")
    with pytest.raises(TrustError, match="not signed by the threshold"):
        evil.rotate_root([world.roots[0]], [world.roots[0], LocalKeySigner(tmp_path / "attacker.pem")], 1, new_online=attacker)
    # the publisher's check refused; an attacker simply skips it and writes the forged root into the channel
    root = world.channel_md("1.root.json")
    root.signed.version = 2
    for role in ("targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(MetadataSigner(attacker).public_key, role)
    root.signatures.clear()
    root.sign(MetadataSigner(world.roots[0]))
    world.write("2.root.json", root)
    error = refused(agent, transport, v120_nan)
    assert error.startswith("metadata signature refused") and "root" in error, error
    assert agent.current_version == "1.1.0"

    # the threshold rotates the root: devices follow it and keep their model
    (world.channel / "2.root.json").unlink()
    world.repo.rotate_root(world.roots[1:], world.roots[1:], 2)
    world.sync()
    agent.clock.now += 3600
    transport.desired_model = v100  # (no rollback order: refused, but only after the metadata refreshed)
    agent.sync()
    assert "downgrade" in agent.build_report().error and agent.current_version == "1.1.0"
    assert (tmp_path / "dev-1" / "tuf" / "root_history" / "2.root.json").is_file(), "the device did not follow root v2"


def test_fast_forward_attack_is_recovered_by_rotating_the_online_key(tmp_path, keys, make_agent, transport, v100, v110):
    """Attack: with the online key (compromised), the attacker signs a timestamp and snapshot with huge version numbers.
    The device cannot tell them from real ones and keeps them, so the publisher's real, lower-numbered metadata is then
    refused as a rollback: every update is blocked (the fast-forward attack).
    Refusal and recovery: the repository's real metadata is refused ("metadata rollback refused") until the root (offline,
    threshold) names a new online key; the device follows that root, drops the metadata the old key signed and accepts
    the repository's again, without losing its model."""
    world = World(tmp_path, keys)
    world.repo.add_targets([ident(v100), ident(v110)])
    world.sync()
    agent = make_agent(trust=world.trust())
    transport.desired_model = v100
    agent.sync()
    assert agent.current_version == "1.0.0"

    stolen = MetadataSigner(world.online)
    snapshot = world.channel_md("snapshot.json")
    snapshot.signed.version = 1000
    snapshot.sign(stolen)
    world.write("1000.snapshot.json", snapshot)
    ts = Metadata(Timestamp(version=1000, expires=utcnow() + timedelta(days=1), snapshot_meta=MetaFile(version=1000)))
    ts.sign(stolen)
    world.write("timestamp.json", ts)
    transport.desired_model = v110
    agent.sync()  # the device accepts the fast-forwarded metadata (validly signed by the online key) and installs
    assert agent.current_version == "1.1.0"

    world.repo.refresh()
    world.sync()  # the publisher's real timestamp has a lower version than the attacker's
    with pytest.raises(MetadataRefused, match="^metadata rollback refused: New timestamp version .* must be >= 1000"):
        agent._trust.refresh()  # what the device's next install would run into: every update blocked

    new_online = LocalKeySigner(create_key_file(tmp_path / "online-2.pem"))
    world.repo.rotate_root(world.roots, world.roots, 1, new_online=new_online)
    world.sync()
    agent._trust.refresh()  # follows root v2, drops the fast-forwarded timestamp, accepts the repository's
    held = Metadata[Timestamp].from_bytes((tmp_path / "dev-1" / "tuf" / "timestamp.json").read_bytes()).signed
    assert held.version < 1000 and agent.current_version == "1.1.0"


def test_metadata_signed_by_an_unknown_key_is_refused(world, installed, transport, v120_nan, tmp_path):
    """Attack: the attacker has no key the root names and signs their own targets listing the rejected version.
    Refusal: the signature does not verify against the online key root names: "metadata signature refused"."""
    world.repo.add_targets([ident(v120_nan)])
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate failed")
    world.sync()
    attacker = MetadataSigner(LocalKeySigner(create_key_file(tmp_path / "nobody.pem")))
    snap = world.channel_md("snapshot.json")
    snap.signed.version += 1
    snap.sign(attacker)
    world.write(f"{snap.signed.version}.snapshot.json", snap)
    ts = world.channel_md("timestamp.json")
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
    ts.sign(attacker)
    world.write("timestamp.json", ts)
    assert refused(installed, transport, v120_nan).startswith("metadata signature refused")


def test_expiry_defaults_are_the_documented_ones():
    """Not an attack: the lifetimes docs/signing.md promises (root 1 year, targets 30 days, snapshot 7, timestamp 1)."""
    e = Expiry()
    assert (e.root, e.targets, e.snapshot, e.timestamp) == (timedelta(days=365), timedelta(days=30), timedelta(days=7), timedelta(days=1))
    assert Snapshot  # (imported for readers of the attacks above)


# -- the local fleet's simulated devices share one client (components/local/shared_trust.py) ------------------------
def shared(world: World):
    from components.local.shared_trust import SharedTrust

    return SharedTrust(world.first_root(), world.channel.as_uri(), world.tmp / "simulated" / "tuf", refresh_seconds=0.0)


def check(trust, d: DesiredModel) -> None:
    trust.check(d.model, d.version, d.sha256, d.size, d.manifest.encode())


def test_a_shared_refresh_is_reused_only_while_the_channels_timestamp_is_unchanged(world, v100, v110, v120_nan):
    """Attack on the simulator's shortcut: a version revoked (or published) a moment after a refresh must not be judged
    on that refresh. Refusal: a new timestamp in the channel always means a full refresh, within the reuse window too."""
    world.repo.add_targets([ident(v100), ident(v120_nan)])
    world.sync()
    trust = shared(world)
    check(trust, v120_nan)  # refreshed: 1.2.0 is a target
    first = trust.refresh()
    assert trust.refresh() is first, "within the window and with the same timestamp, the refresh is reused"
    world.repo.revoke(MODEL, "1.2.0", v120_nan.sha256, "gate of ring 'canary' failed: NaN outputs")
    world.repo.add_targets([ident(v110)])
    world.sync()
    with pytest.raises(MetadataRefused, match="not in the signed targets"):
        check(trust, v120_nan)
    check(trust, v110)  # published a moment later: seen at once


def test_a_failed_shared_refresh_is_never_reused(world, v100, v110):
    """Attack: the channel's timestamp rolled back to an older one. Refusal: every check refreshes again and refuses it,
    none passes on the strength of an earlier success."""
    world.repo.add_targets([ident(v100)])
    world.sync()
    older = (world.channel / "timestamp.json").read_bytes()
    world.repo.add_targets([ident(v110)])
    world.sync()
    trust = shared(world)
    check(trust, v110)
    (world.channel / "timestamp.json").write_bytes(older)
    for _ in range(2):
        with pytest.raises(MetadataRefused, match="rollback"):
            check(trust, v110)


def store_device(store: Path, tmp: Path, name: str = "dev-1") -> TrustedMetadata:
    """A device reading the publisher's store itself: what it sees is what the publishers left there."""
    meta = store / "tuf" / "metadata"
    return TrustedMetadata((meta / "1.root.json").read_bytes(), meta.as_uri(), tmp / name / "tuf", refresh_seconds=0.0)


def test_the_local_timestamp_is_replaced_only_while_it_carries_the_copy_read(tmp_path):
    """The directory store's compare-and-swap: the read, compare and rename run under an flock on a sidecar lock file,
    so a second local publisher waits for the first one's swap and then finds its own copy stale."""
    import fcntl
    import os
    import threading

    storage = DirectoryStorage(tmp_path / "store")
    swap_refuses_a_stale_tag(storage)
    found = storage.read_tagged("timestamp.json")
    assert found is not None
    fd = os.open(storage.root / ".timestamp.json.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done: list[bool] = []
    waiting = threading.Thread(target=lambda: done.append(storage.swap("timestamp.json", b"v3", found[1])))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive() and not done, "the swap waits while another publisher holds the lock"
    os.close(fd)
    waiting.join(5)
    assert done == [True] and storage.read("timestamp.json") == b"v3"


def test_two_publishers_adding_targets_from_one_version_lose_neither(tmp_path, keys):
    """Race: two publishers on one store (two stacks sharing it, CI beside a laptop) both read targets v1 and both write
    v2, so one's target silently vanished and its gate rolled out a version no metadata listed.
    Refusal: v2 is created, never overwritten; the slower publisher finds it taken, re-reads it and adds its target on
    top as v3, and a device's refresh lists both."""
    store = tmp_path / "store"
    both_add_from_one_version(DirectoryStorage(store), keys.signer, LocalKeySigner(create_key_file(tmp_path / "root.pem")))
    device_lists(store_device(store, tmp_path), V1, V2, V3)


def test_a_publisher_that_keeps_losing_the_race_stops_naming_store_role_and_version(tmp_path, keys):
    """Race: another publisher writes each targets version this one is about to write, again and again.
    Refusal: after RETRIES re-reads it stops with a TrustError naming the store, the role and version and the fix; the
    other's targets are intact and a device sees a consistent repository without this one's."""
    store = DirectoryStorage(tmp_path / "store")
    TrustRepository(store, keys.signer).init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [V1])
    other = TrustRepository(store, keys.signer)
    theirs = [race_version(f"2.{i}.0", sha) for i, sha in enumerate("01234")]
    pending = list(theirs)

    def before(call: str, name: str) -> None:
        if call == "create" and name.endswith(".targets.json"):
            other.add_targets([pending.pop(0)])

    with pytest.raises(TrustError) as err:
        TrustRepository(Interleaved(store, before), keys.signer).add_targets([V2])
    assert not pending
    message = str(err.value)
    assert store.url in message and "another publisher wrote targets v6 at the same time" in message and "run again" in message
    assert listed(other) == {race_path(V1), *map(race_path, theirs)}
    device = store_device(tmp_path / "store", tmp_path)
    device_lists(device, V1, *theirs)
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device_lists(device, V2)


class Stopped(Exception):
    """The publisher's process ended here (killed, a lost connection)."""


def test_a_publisher_stopped_between_targets_and_snapshot_leaves_devices_the_state_before(tmp_path, keys):
    """Race: the publisher stops after writing targets v2, before the snapshot naming it.
    Refusal: devices still see the complete state before (v1: nothing half-applied), and running it again lists the
    target it had written, without a new targets version."""
    store = DirectoryStorage(tmp_path / "store")
    TrustRepository(store, keys.signer).init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [V1])

    def before(call: str, name: str) -> None:
        if name.endswith(".snapshot.json"):
            raise Stopped(name)

    with pytest.raises(Stopped):
        TrustRepository(Interleaved(store, before), keys.signer).add_targets([V2])
    device = store_device(tmp_path / "store", tmp_path)
    device_lists(device, V1)
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device_lists(device, V2)

    again = TrustRepository(store, keys.signer)
    assert again.add_targets([V2]) == []
    assert again.state()["roles"]["targets"]["version"] == 2
    device_lists(device, V1, V2)


def test_a_slower_publisher_cannot_overwrite_a_newer_timestamp_with_its_older_one(tmp_path, keys):
    """Race: timestamp.json is the one name that is overwritten. Publisher A (snapshot 7) and B (snapshot 8) both read
    the timestamp naming 6; B writes it naming 8, then A overwrites it naming 7, and a device sees snapshot 7, without
    B's target, until the next publish (reading back after writing only narrowed this: A found its own 7 and stopped).
    Refusal: the timestamp is written by compare-and-swap; A's swap against the copy naming 6 is refused, it re-reads,
    finds snapshot 8 named and leaves it, and a device lists both targets."""
    store = tmp_path / "store"
    slower_publisher_overwrites_a_newer_timestamp(
        DirectoryStorage(store), keys.signer, LocalKeySigner(create_key_file(tmp_path / "root.pem"))
    )
    device_lists(store_device(store, tmp_path), V1, V2, V3)


def test_a_refresh_racing_a_publish_never_moves_the_timestamp_back(tmp_path, keys):
    """Race: a scheduled refresh re-signs the timestamp naming the snapshot it read while a publish moves it on.
    Refusal: the refresh's swap is refused and it leaves the publisher's newer timestamp in place."""
    store = tmp_path / "store"
    refresh_never_moves_the_timestamp_back(DirectoryStorage(store), keys.signer, LocalKeySigner(create_key_file(tmp_path / "root.pem")))
    device_lists(store_device(store, tmp_path), V1, V2)


def test_a_publisher_that_keeps_losing_the_timestamp_stops_naming_store_role_and_version(tmp_path, keys):
    """Race: before each of this publisher's timestamp swaps, another re-signs the timestamp and a third writes a newer
    snapshot and stops before its timestamp, so there is always a newer snapshot to name and a stale copy to name it
    over. Refusal: after RETRIES refused swaps it stops with a TrustError naming the store, the role and version and the
    fix; devices see a consistent repository, and running again names the newest snapshot."""
    store = DirectoryStorage(tmp_path / "store")
    TrustRepository(store, keys.signer).init([LocalKeySigner(create_key_file(tmp_path / "root.pem"))], 1, [V1])
    refresher = TrustRepository(store, keys.signer)

    def stop(call: str, name: str) -> None:
        if call == "swap":
            raise Stopped(name)

    stalled = TrustRepository(Interleaved(store, stop), keys.signer)
    theirs = fillers(5)
    pending = list(theirs)

    def before(call: str, name: str) -> None:
        if call == "swap" and name == "timestamp.json":
            refresher.refresh()
            with pytest.raises(Stopped):
                stalled.add_targets([pending.pop(0)])

    with pytest.raises(TrustError) as err:
        TrustRepository(Interleaved(store, before), keys.signer).add_targets([V2])
    assert not pending
    message = str(err.value)
    assert store.url in message and "another publisher wrote timestamp v6 at the same time, 5 times in a row" in message
    assert "run again" in message
    assert timestamp_of(store) == (6, 6)
    device = store_device(tmp_path / "store", tmp_path)
    device_lists(device, V1, V2, *theirs[:4])
    with pytest.raises(MetadataRefused, match=NOT_A_TARGET):
        device_lists(device, theirs[4])
    assert TrustRepository(store, keys.signer).refresh() == ["timestamp"]
    assert timestamp_of(store) == (7, 7)
    device_lists(device, theirs[4])


def test_a_publisher_still_holding_the_rotated_out_online_key_is_stopped_before_writing(tmp_path, keys, world):
    """Fault: publisher B rotates the root to a new online key (e.g. after a leak) while publisher A (a CI job, the
    other stack on the store) still has the old one configured. A's next publish, signed with a key root v2 no longer
    names, would be refused by every device that followed the rotation: each update blocked until someone noticed.
    Refusal: A stops with a TrustError naming the store, the root version and both keys, and how to fix it, before
    writing anything; with the new key the same publish lands and a device that followed root v2 lists it."""
    world.repo.add_targets([V1])
    new_online = LocalKeySigner(create_key_file(tmp_path / "online-2.pem"))
    stale = TrustRepository(DirectoryStorage(tmp_path / "store"), world.online)
    stale.targets()  # A has been publishing before the rotation
    world.repo.rotate_root(world.roots, world.roots, 1, new_online=new_online)
    metadata = tmp_path / "store" / "tuf" / "metadata"
    before = sorted(p.name for p in metadata.iterdir())
    with pytest.raises(TrustError) as err:
        stale.add_targets([V2])
    message = str(err.value)
    assert "root v2 names" in message and "not this publisher's online key" in message and "rotate-root" in message
    assert MetadataSigner(new_online).public_key.keyid[:12] in message and MetadataSigner(world.online).public_key.keyid[:12] in message
    assert sorted(p.name for p in metadata.iterdir()) == before, "nothing written"
    with pytest.raises(TrustError, match="root v2 names"):
        stale.refresh()  # the controller's periodic re-sign is stopped the same way
    TrustRepository(DirectoryStorage(tmp_path / "store"), new_online).add_targets([V2])
    device_lists(store_device(tmp_path / "store", tmp_path), V1, V2)
