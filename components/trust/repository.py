"""A stack's TUF repository: root, targets, snapshot and timestamp metadata in the model store, written with
python-tuf's metadata API.

Roles and keys (docs/signing.md, "Update metadata"):
  * root: the stack's root key(s), offline (`edgefleet keys create --role root`), with a threshold; root signs only
    root metadata (which keys sign the other roles) and its own successors (`edgefleet trust rotate-root`);
  * targets, snapshot, timestamp: the stack's online signing key, the same one that signs manifests and rollback
    orders (a key file, a KMS key, a Key Vault key). Targets must be online: a ring gate revokes a rejected version
    inside `pulumi up`. Compromise of the online key is recovered by a root rotation naming a new online key, which
    devices accept only when the root threshold signed it.

Expiry (Expiry): root 365 days, targets 30, snapshot 7, timestamp 1 by default; `edgefleet:trust.expiry` in a stack
file changes them. `refresh` re-signs the timestamp (and snapshot and targets once past half their life); `edgefleet
up` and the ring gates call it before they deploy, `edgefleet trust refresh` on a schedule between rollouts.

Consistent snapshots: targets and snapshot are written as `<version>.<role>.json` and never overwritten, then the
timestamp last, so a device reading while a rollout publishes sees one repository state or the one before it.

Concurrent publishers (two stacks sharing a store, CI beside a laptop): versioned metadata is written create-only
(storage.create), so only one can write targets N+1; the other re-reads the newest and redoes its change on top
(RETRIES times, then TrustError: run again). The newest version is found by probing `<version+1>.<role>.json` past the
current copy, so a publisher that stopped between writes leaves a version the next one builds on and lists. Only
timestamp.json is overwritten, by compare-and-swap (storage.swap): it only ever moves to a higher version naming the
same or a newer snapshot.

Revocation: removing a version's target (new targets, snapshot and timestamp versions). Its record stays inside the
signed targets under `x-edgefleet-revoked` (who, why, when), so a device can say why it refuses, and so that publishing
the same artifact again (`edgefleet up` with a version a gate rejected) cannot silently put it back. Patches to and from
a revoked version (docs/deltas.md) leave the targets with it, and are never listed again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

from securesystemslib.signer import Key
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp

from components.trust.signer import MetadataSigner, tuf_key
from components.trust.storage import MetadataStorage
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.signing import Signer
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.tuf import PatchIdentity, TargetIdentity, is_patch_target, manifest_digest, target_path

REVOKED_FIELD = "x-edgefleet-revoked"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
RETRIES = 5


@dataclass(frozen=True)
class Expiry:
    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=30)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    @classmethod
    def of_seconds(cls, seconds: dict[str, float]) -> "Expiry":
        return cls(**{role: timedelta(seconds=float(s)) for role, s in seconds.items()})


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class TrustError(EdgefleetError):
    """The repository cannot do what was asked: not initialised, a key that does not meet a threshold, …"""


class TrustRepository:
    def __init__(
        self, storage: MetadataStorage, online: Signer | None, expiry: Expiry = Expiry(), now: Callable[[], datetime] = utcnow
    ) -> None:
        self.storage = storage
        self.online = MetadataSigner(online) if online is not None else None
        self.expiry = expiry
        self.now = now
        self._root: Metadata[Root] | None = None  # the newest root seen: later ones are probed for before each signature

    # -- reading ----------------------------------------------------------------------------------------------------
    def initialised(self) -> bool:
        return self.storage.read("1.root.json") is not None

    def root(self) -> Metadata[Root]:
        """The newest root: 1.root.json, 2.root.json, … as far as they go."""
        self._root = None
        return self._newest_root()

    def _newest_root(self) -> Metadata[Root]:
        """The newest root, probing on from the last one this repository read (versioned roots are never rewritten)."""
        data: bytes | None = None
        if self._root is None:
            data = self.storage.read("1.root.json")
            if data is None:
                raise TrustError(
                    self.storage.url,
                    "no TUF repository here (no 1.root.json)",
                    "initialise it with `edgefleet trust init --stack STACK` (the local stack's `edgefleet up` does it with its root key)",
                )
        version = 1 if self._root is None else self._root.signed.version
        while (nxt := self.storage.read(f"{version + 1}.root.json")) is not None:
            data, version = nxt, version + 1
        if data is not None:
            self._root = Metadata[Root].from_bytes(data)
        assert self._root is not None
        return self._root

    def _read(self, role: str) -> Metadata[Any]:
        md = self._newest(role)
        if md is None:
            raise TrustError(self.storage.url, f"the repository has no {role}.json", "initialise it with `edgefleet trust init`")
        return md

    def _newest(self, role: str) -> Metadata[Any] | None:
        """The newest `<version>.<role>.json`, probing on from the current copy `<role>.json`: a publisher that raced
        another or stopped between the two writes leaves the copy behind the versioned file."""
        data = self.storage.read(f"{role}.json")
        version = Metadata.from_bytes(data).signed.version if data is not None else 0
        while (nxt := self.storage.read(f"{version + 1}.{role}.json")) is not None:
            data, version = nxt, version + 1
        return Metadata.from_bytes(data) if data is not None else None

    def targets(self) -> Metadata[Targets]:
        md: Metadata[Targets] = self._read("targets")
        return md

    def revoked(self) -> dict[str, dict[str, Any]]:
        return dict(self.targets().signed.unrecognized_fields.get(REVOKED_FIELD) or {})

    def state(self) -> dict[str, Any]:
        """What `edgefleet trust show` prints: each role's version and expiry, the targets, the patches, the revoked."""
        root = self.root()
        out: dict[str, Any] = {"url": self.storage.url, "roles": {}}
        for role, md in (("root", root), *((r, self._read(r)) for r in ONLINE_ROLES)):
            keys = root.signed.roles[role]
            out["roles"][role] = {
                "version": md.signed.version,
                "expires": md.signed.expires.isoformat(),
                "expired": md.signed.is_expired(self.now()),
                "threshold": keys.threshold,
                "keyids": list(keys.keyids),
            }
        targets = self.targets().signed
        out["targets"] = {path: _describe(t) for path, t in targets.targets.items() if not is_patch_target(t.custom)}
        out["patches"] = {p.path: p.__dict__ for p in self.patches()}  # docs/deltas.md
        out["revoked"] = self.revoked()
        return out

    # -- writing ----------------------------------------------------------------------------------------------------
    def _online(self, role: str) -> MetadataSigner:
        """The online key, once the newest root is seen to name it for `role`.

        Another publisher's root rotation may have named a new online key since this one's configuration was written:
        metadata signed with the old key would be refused by every device that followed the rotation, so each update
        would be blocked until someone noticed. Refused here, before anything is written."""
        online = self._online_key()
        root = self._newest_root()
        named = root.signed.roles[role].keyids
        if online.public_key.keyid not in named:
            raise TrustError(
                self.storage.url,
                f"root v{root.signed.version} names {', '.join(k[:12] for k in named)} as the {role} key, not this publisher's "
                f"online key {online.public_key.keyid[:12]} (a root rotation moved the online key)",
                "sign with the key that rotation named (the stack's edgefleet:signing key), or rotate the root again to name "
                "this one: `edgefleet trust rotate-root --stack S --old K… --new K… --online-key KEY`",
            )
        return online

    def _online_key(self) -> MetadataSigner:
        if self.online is None:
            raise TrustError(self.storage.url, "no online signing key was given", "pass the stack's signing key")
        return self.online

    def _expires(self, role: str) -> datetime:
        lifetime: timedelta = getattr(self.expiry, role)
        return self.now() + lifetime

    def init(self, root_signers: Sequence[Signer], threshold: int, targets: Iterable[TargetIdentity] = ()) -> Metadata[Root]:
        """Root version 1 (root keys with `threshold`, the online key for targets, snapshot and timestamp) and the
        first targets, snapshot and timestamp. Refuses to overwrite an existing repository."""
        if self.initialised():
            raise TrustError(self.storage.url, "a TUF repository already exists here", "rotate its root with `edgefleet trust rotate-root`")
        if not 1 <= threshold <= len(root_signers):
            raise TrustError(
                self.storage.url, f"root threshold {threshold} with {len(root_signers)} root key(s)", "give at least as many keys"
            )
        online = self._online_key()
        root = Root(expires=self._expires("root"), consistent_snapshot=True)
        for s in root_signers:
            root.add_key(tuf_key(s.public_key_pem()), "root")
        root.roles["root"].threshold = threshold
        for role in ONLINE_ROLES:
            root.add_key(online.public_key, role)
        md = Metadata(root)
        for s in root_signers:
            md.sign(MetadataSigner(s), append=True)
        self._check_root(None, md)
        if not self.storage.create("1.root.json", md.to_bytes()):
            raise TrustError(
                self.storage.url,
                "another publisher initialised this repository at the same time",
                "nothing to do: it is initialised once; check it with `edgefleet trust show`",
            )
        self.storage.write("root.json", md.to_bytes())
        tg = Targets(version=1, expires=self._expires("targets"))
        for ident in targets:
            tg.targets[target_path(ident.model, ident.version, ident.sha256)] = _target_file(ident)
        if not self._create(tg, "targets"):
            raise self._raced("targets", 1)
        self._publish_snapshot()
        return md

    def add_targets(self, idents: Iterable[TargetIdentity]) -> list[str]:
        """Publishes each artifact as a target (a no-op for one already listed as it is). Never re-adds a revoked one:
        returns the paths it refused for that reason."""
        idents = list(idents)
        refused: list[str] = []

        def change(signed: Targets) -> bool:
            refused.clear()
            revoked = signed.unrecognized_fields.get(REVOKED_FIELD) or {}
            changed = False
            for ident in idents:
                path = target_path(ident.model, ident.version, ident.sha256)
                if path in revoked:
                    refused.append(path)
                    continue
                want = _target_file(ident)
                have = signed.targets.get(path)
                if have is None or have.to_dict() != want.to_dict():
                    signed.targets[path] = want
                    changed = True
            return changed

        self._change_targets(change)
        return refused

    def add_patches(self, patches: Iterable[PatchIdentity]) -> list[str]:
        """Lists each patch as a target (docs/deltas.md). Never one that starts or ends at a revoked version, nor one
        whose versions are not both listed: returns the paths it refused."""
        patches = list(patches)
        refused: list[str] = []

        def change(signed: Targets) -> bool:
            refused.clear()
            revoked = list((signed.unrecognized_fields.get(REVOKED_FIELD) or {}).values())
            changed = False
            for patch in patches:
                ends = ((patch.from_version, patch.from_sha256), (patch.to_version, patch.to_sha256))
                gone = any(patch.links(r.get("model", ""), r.get("version", ""), r.get("sha256", "")) for r in revoked)
                listed = all(target_path(patch.model, v, sha) in signed.targets for v, sha in ends)
                if gone or not listed:
                    refused.append(patch.path)
                    continue
                want = _patch_file(patch)
                have = signed.targets.get(patch.path)
                if have is None or have.to_dict() != want.to_dict():
                    signed.targets[patch.path] = want
                    changed = True
            return changed

        self._change_targets(change)
        return refused

    def patches(self) -> list[PatchIdentity]:
        """The patches the signed targets list."""
        return _patches_of(self.targets().signed)

    def publish_desired(self, desired: DesiredModel) -> list[str]:
        """Lists a declared version (its artifact and exact manifest) as a target: what a ring gate does before it
        deploys. Returns the paths refused because they were revoked."""
        return self.add_targets(
            [TargetIdentity(desired.model, desired.version, desired.sha256, desired.size, manifest_digest(desired.manifest.encode()))]
        )

    def revoke(self, model: str, version: str, sha256: str, reason: str) -> bool:
        """Removes the artifact's target, and every patch to or from it, and records why. True if anything changed."""
        path = target_path(model, version, sha256)

        def change(signed: Targets) -> bool:
            revoked = dict(signed.unrecognized_fields.get(REVOKED_FIELD) or {})
            linked = [p.path for p in _patches_of(signed) if p.links(model, version, sha256)]
            listed = path in signed.targets
            if not listed and path in revoked and not linked:
                return False
            signed.targets.pop(path, None)
            for patch_path in linked:
                signed.targets.pop(patch_path, None)
            if path not in revoked or listed:
                revoked[path] = {"model": model, "version": version, "sha256": sha256, "reason": reason[:500], "at": self.now().isoformat()}
            signed.unrecognized_fields[REVOKED_FIELD] = revoked
            return True

        return self._change_targets(change)

    def refresh(self) -> list[str]:
        """Re-signs the timestamp with a new expiry, and snapshot and targets too once they are past half their life
        (each re-signed role forces the ones below it). Returns the roles it re-signed."""
        now = self.now()

        def aging(signed: Signed) -> bool:
            lifetime: timedelta = getattr(self.expiry, signed.type)
            return bool(signed.expires - now < lifetime / 2)

        if aging(self.targets().signed):
            self._change_targets(aging)
            return ["targets", "snapshot", "timestamp"]
        if aging(self._read("snapshot").signed):
            self._publish_snapshot(resign=True)
            return ["snapshot", "timestamp"]
        self._publish_timestamp(resign=True)
        return ["timestamp"]

    def _change_targets(self, change: Callable[[Targets], bool]) -> bool:
        """Applies `change` to the newest targets and writes the result as the next version. When another publisher
        wrote that version first, applies `change` again on top of theirs, so neither change is lost. Then makes the
        snapshot and timestamp name the newest targets, also when `change` had nothing to do: a publisher that stopped
        after writing targets leaves a version devices do not see yet (a revocation among them). False when unchanged."""
        for _ in range(RETRIES):
            current = self.targets()
            signed = copy.deepcopy(current.signed)
            if not change(signed):
                self._publish_snapshot()
                return False
            signed.version = current.signed.version + 1
            signed.expires = self._expires("targets")
            if self._create(signed, "targets"):
                self._publish_snapshot()
                return True
        raise self._raced("targets", signed.version)

    def _publish_snapshot(self, resign: bool = False) -> None:
        """Writes the next snapshot naming the newest targets (unless the newest snapshot already does and `resign` is
        not asked), then the timestamp. A snapshot version another publisher took is re-read: theirs is fresh, and
        names targets at least as new, or is followed by one that does."""
        for _ in range(RETRIES):
            current: Metadata[Snapshot] | None = self._newest("snapshot")
            newest = self.targets().signed.version
            if current is not None and current.signed.meta["targets.json"].version >= newest and not resign:
                break
            if current is not None:
                snapshot = copy.deepcopy(current.signed)
            else:
                snapshot = Snapshot()
                snapshot.version = 0  # the first write makes it version 1
            snapshot.version += 1
            snapshot.expires = self._expires("snapshot")
            snapshot.meta["targets.json"] = MetaFile(version=newest)
            if self._create(snapshot, "snapshot"):
                break
            resign = False
        else:
            raise self._raced("snapshot", snapshot.version)
        self._publish_timestamp()

    def _publish_timestamp(self, resign: bool = False) -> None:
        """Points timestamp.json, the one name that is overwritten, at the newest snapshot with a compare-and-swap
        against the copy it read (storage.swap), so a slower publisher cannot put back an older snapshot over a newer
        one. A publisher whose copy another replaced re-reads it and writes only if it would name a newer snapshot: the
        other's timestamp is as fresh as a re-signed one. The version is always the read copy's plus one, so no two
        timestamps share a version and none goes backwards."""
        version = 1
        for _ in range(RETRIES):
            newest = self._read("snapshot").signed.version
            found = self.storage.read_tagged("timestamp.json")
            current = Metadata[Timestamp].from_bytes(found[0]).signed if found is not None else None
            named = current.snapshot_meta.version if current is not None else 0
            if named >= newest and not resign:
                return
            version = (current.version if current is not None else 0) + 1
            md = Metadata(
                Timestamp(version=version, expires=self._expires("timestamp"), snapshot_meta=MetaFile(version=max(newest, named)))
            )
            md.sign(self._online("timestamp"))
            if self.storage.swap("timestamp.json", md.to_bytes(), found[1] if found is not None else None):
                return
            resign = False
        raise self._raced("timestamp", version)

    def _create(self, signed: Targets | Snapshot, role: str) -> bool:
        """Signs with the online key and creates `<version>.<role>.json` (what clients fetch, consistent snapshots),
        then replaces `<role>.json` (the repository's own current copy). False when that version was taken."""
        md = Metadata(signed)
        md.sign(self._online(role))
        data = md.to_bytes()
        if not self.storage.create(f"{signed.version}.{role}.json", data):
            return False
        self.storage.write(f"{role}.json", data)
        return True

    def _raced(self, role: str, version: int) -> TrustError:
        return TrustError(
            self.storage.url,
            f"another publisher wrote {role} v{version} at the same time, {RETRIES} times in a row",
            "run again (the repository is consistent: devices see the last complete state)",
        )

    # -- root rotation --------------------------------------------------------------------------------------------
    def rotate_root(
        self,
        old_signers: Sequence[Signer],
        new_signers: Sequence[Signer],
        threshold: int,
        new_online: Signer | None = None,
    ) -> Metadata[Root]:
        """The next root, signed by the old root's threshold (`old_signers`) and the new one's (`new_signers`), naming
        the new root keys and, with `new_online`, a new online key for targets, snapshot and timestamp (which are then
        re-signed with it). Devices follow it: ngclient accepts root N+1 only when root N's threshold signed it."""
        current = self.root()
        if not 1 <= threshold <= len(new_signers):
            raise TrustError(self.storage.url, f"root threshold {threshold} with {len(new_signers)} new root key(s)", "give more keys")
        root = copy.deepcopy(current.signed)
        root.version += 1
        root.expires = self._expires("root")
        for keyid in list(root.roles["root"].keyids):
            root.revoke_key(keyid, "root")
        for s in new_signers:
            root.add_key(tuf_key(s.public_key_pem()), "root")
        root.roles["root"].threshold = threshold
        if new_online is not None:
            self.online = MetadataSigner(new_online)
            for role in ONLINE_ROLES:
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(self.online.public_key, role)
        md = Metadata(root)
        seen: set[str] = set()
        for s in [*old_signers, *new_signers]:
            ms = MetadataSigner(s)
            if ms.public_key.keyid not in seen:
                md.sign(ms, append=True)
                seen.add(ms.public_key.keyid)
        self._check_root(current, md)
        if not self.storage.create(f"{root.version}.root.json", md.to_bytes()):
            raise TrustError(
                self.storage.url,
                f"another publisher wrote root v{root.version} at the same time",
                "check it with `edgefleet trust show`, and rotate again on top of it if it is not the root you meant",
            )
        self.storage.write("root.json", md.to_bytes())
        if new_online is not None:
            self._change_targets(lambda signed: True)
        return md

    def _check_root(self, previous: Metadata[Root] | None, new: Metadata[Root]) -> None:
        """What a device will check: the previous root's threshold and the new root's own both signed it."""
        for label, delegator in (("the previous root", previous), ("the new root", new)):
            if delegator is None:
                continue
            try:
                delegator.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            except UnsignedMetadataError as exc:
                role = delegator.signed.roles["root"]
                raise TrustError(
                    self.storage.url,
                    f"root version {new.signed.version} is not signed by the threshold of {label} "
                    f"({role.threshold} of {len(role.keyids)} keys): {exc}",
                    "sign with enough of the current root keys (--old) and of the new ones (--new)",
                ) from None


def _target_file(ident: TargetIdentity) -> TargetFile:
    return TargetFile(
        length=ident.size,
        hashes={"sha256": ident.sha256},
        path=target_path(ident.model, ident.version, ident.sha256),
        unrecognized_fields={"custom": ident.custom()},
    )


def _patch_file(patch: PatchIdentity) -> TargetFile:
    return TargetFile(length=patch.size, hashes={"sha256": patch.sha256}, path=patch.path, unrecognized_fields={"custom": patch.custom()})


def _patches_of(targets: Targets) -> list[PatchIdentity]:
    out = []
    for t in targets.targets.values():
        patch = PatchIdentity.from_target(t.length, t.hashes, t.custom) if is_patch_target(t.custom) else None
        if patch is not None:
            out.append(patch)
    return out


def _describe(t: TargetFile) -> dict[str, Any]:
    """A version's target as `edgefleet trust show` prints it."""
    ident = TargetIdentity.from_custom(t.custom)
    return ident.__dict__ if ident is not None else {}


def key_of(signer: Signer) -> Key:
    return tuf_key(signer.public_key_pem())


__all__ = ["Expiry", "Signed", "TrustError", "TrustRepository", "key_of", "utcnow"]
