"""Two publishers writing one TUF repository at once (two stacks sharing a model store, CI beside a laptop), for every
store: the other publisher's whole run is slotted in between this publisher's read of the newest metadata and its
write, the interleaving that used to lose one's targets. Shared by tests/agent (a directory), tests/aws (S3) and
tests/azure (blob)."""

from __future__ import annotations

from typing import Any, Callable

from tuf.api.metadata import Metadata, Timestamp

from components.trust.repository import TrustRepository
from components.trust.storage import MetadataStorage
from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest, target_path

MANIFEST = b"name: detector\n"


def version(number: str, sha: str) -> TargetIdentity:
    return TargetIdentity("detector", number, sha * 64, 4096, manifest_digest(MANIFEST))


V1, V2, V3 = version("1.0.0", "a"), version("1.1.0", "b"), version("1.2.0", "c")


class Interleaved:
    """The store as one publisher sees it: `before(call, name)` runs just before each of its writes, where the other
    publisher's run is slotted in."""

    def __init__(self, storage: MetadataStorage, before: Callable[[str, str], None]) -> None:
        self.storage = storage
        self.before = before

    @property
    def url(self) -> str:
        return self.storage.url

    def read(self, name: str) -> bytes | None:
        return self.storage.read(name)

    def write(self, name: str, data: bytes) -> None:
        self.before("write", name)
        self.storage.write(name, data)

    def create(self, name: str, data: bytes) -> bool:
        self.before("create", name)
        return self.storage.create(name, data)

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        return self.storage.read_tagged(name)

    def swap(self, name: str, data: bytes, tag: str | None) -> bool:
        self.before("swap", name)
        return self.storage.swap(name, data, tag)


def listed(repo: TrustRepository) -> set[str]:
    return set(repo.targets().signed.targets)


def path(ident: TargetIdentity) -> str:
    return target_path(ident.model, ident.version, ident.sha256)


def device_lists(device: Any, *idents: TargetIdentity) -> None:
    """A device (TrustedMetadata) refreshes the whole chain and finds each version a target."""
    for ident in idents:
        device.check(ident.model, ident.version, ident.sha256, ident.size, MANIFEST)


def both_add_from_one_version(storage: MetadataStorage, online: Any, root: Any) -> TrustRepository:
    """Publisher A and B both read targets v1 (listing V1); B writes v2 (adding V3) before A writes its v2 (adding V2).
    A's create-only write finds v2 taken, re-reads B's and adds V2 on top as v3: both targets end up listed."""
    TrustRepository(storage, online).init([root], 1, [V1])
    other = TrustRepository(storage, online)
    raced: list[str] = []

    def before(call: str, name: str) -> None:
        if call == "create" and name.endswith(".targets.json") and not raced:
            raced.append(name)
            other.add_targets([V3])

    mine = TrustRepository(Interleaved(storage, before), online)
    assert mine.add_targets([V2]) == []
    assert raced == ["2.targets.json"], "both started from targets v1"
    assert listed(mine) == {path(V1), path(V2), path(V3)}
    assert mine.targets().signed.version == 3
    state = mine.state()["roles"]
    assert state["snapshot"]["version"] == 3 and state["timestamp"]["version"] == 3
    return mine


def swap_refuses_a_stale_tag(storage: MetadataStorage) -> None:
    """The compare-and-swap timestamp.json is written with: the first write only while there is none, then only over
    the copy that was read; a writer holding a stale tag changes nothing."""
    assert storage.swap("timestamp.json", b"v1", None)
    assert not storage.swap("timestamp.json", b"other v1", None), "the first write is create-only"
    found = storage.read_tagged("timestamp.json")
    assert found is not None and found[0] == b"v1"
    assert storage.swap("timestamp.json", b"v2", found[1])
    assert not storage.swap("timestamp.json", b"stale v2", found[1]), "the tag read before v2 is stale"
    again = storage.read_tagged("timestamp.json")
    assert again is not None and again[0] == b"v2" and again[1] != found[1]


def timestamp_of(storage: MetadataStorage) -> tuple[int, int]:
    """timestamp.json's (version, the snapshot version it names)."""
    signed = Metadata[Timestamp].from_bytes(storage.read("timestamp.json") or b"").signed
    return signed.version, signed.snapshot_meta.version


def fillers(count: int) -> list[TargetIdentity]:
    return [version(f"0.{i}.0", "0123456789"[i]) for i in range(count)]


def slower_publisher_overwrites_a_newer_timestamp(storage: MetadataStorage, online: Any, root: Any) -> None:
    """The race the compare-and-swap closes. Publisher A adds V2 (targets and snapshot 7) and reads timestamp v6
    naming snapshot 6; B, slotted in before A's timestamp write, adds V3 (targets and snapshot 8) and moves the
    timestamp to v7 naming 8; then A writes its timestamp naming 7. A plain overwrite, even read back, left snapshot 7
    (without V3) visible until the next publish. Here A's swap is refused, it re-reads, finds snapshot 8 named and
    writes nothing: the timestamp names 8, which lists V1, V2 and V3."""
    TrustRepository(storage, online).init([root], 1, [V1])
    other = TrustRepository(storage, online)
    for filler in fillers(5):
        other.add_targets([filler])
    assert timestamp_of(storage) == (6, 6)
    swaps: list[tuple[int, int]] = []

    def before(call: str, name: str) -> None:
        if call == "swap" and name == "timestamp.json":
            swaps.append(timestamp_of(storage))
            if len(swaps) == 1:
                other.add_targets([V3])

    mine = TrustRepository(Interleaved(storage, before), online)
    assert mine.add_targets([V2]) == []
    assert swaps == [(6, 6)], "A read timestamp v6 and tried once; after B's v7 it had nothing newer to name"
    assert timestamp_of(storage) == (7, 8)
    assert mine.targets().signed.version == 8 and listed(mine) >= {path(V1), path(V2), path(V3)}


def refresh_never_moves_the_timestamp_back(storage: MetadataStorage, online: Any, root: Any) -> None:
    """A scheduled refresh re-signs timestamp v1 naming snapshot 1 while a publisher, slotted in before its write, adds
    V2 (snapshot 2, timestamp v2). The refresh's swap is refused; re-reading, it finds a fresher timestamp naming a
    newer snapshot and leaves it: the timestamp never goes back to naming snapshot 1 nor repeats version 2."""
    TrustRepository(storage, online).init([root], 1, [V1])
    other = TrustRepository(storage, online)
    seen: list[tuple[int, int]] = []

    def before(call: str, name: str) -> None:
        if call == "swap" and name == "timestamp.json":
            seen.append(timestamp_of(storage))
            if len(seen) == 1:
                other.add_targets([V2])
                seen.append(timestamp_of(storage))

    assert TrustRepository(Interleaved(storage, before), online).refresh() == ["timestamp"]
    assert seen == [(1, 1), (2, 2)], "one refused swap, no second attempt"
    assert timestamp_of(storage) == (2, 2)
