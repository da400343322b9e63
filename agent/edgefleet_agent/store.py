"""The agent's on-disk state for one model: model slots and the pointer that says which one is served.

    <state_dir>/<model>/
      current.json                pointer: {"current": slot ref | null, "previous": slot ref | null}
      slots/<version>-<id>/       one verified model version: model.onnx, model.yaml, model.yaml.sig
      downloads/                  artifacts being fetched (never served); only the newest resumable partial
                                  download outlives a restart or a refusal, for a week at most
      agent.lock                  held while an agent process uses this directory

Every step of an install is a rename of a fully written, fsynced file or directory, and the pointer is
renamed last, so a process killed at any instant leaves either the old pointer (old model) or the new
one (new model), each naming a complete slot. Start-up re-verifies the slot anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX devices run without the single-agent lock
    fcntl = None  # type: ignore[assignment]

from edgefleet_agent.contract.manifest import REFERENCE_KIND, VARIANT_KINDS
from edgefleet_agent.download import PARTIAL_SUFFIX, STATE_SUFFIX
from edgefleet_agent.fsutil import fsync_dir

POINTER_FORMAT = "edgefleet-agent-pointer/v1"
POINTER_FILE = "current.json"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.yaml"
SIGNATURE_FILE = "model.yaml.sig"
TMP_PREFIX = ".tmp-"
PAUSE_ENV = "EDGEFLEET_AGENT_TEST_PAUSE_AT"
PARTIAL_MAX_AGE_SECONDS = 7 * 24 * 3600
STAGES = ("downloaded", "model-fsynced", "slot-committed", "before-pointer-rename", "pointer-renamed")


class StoreError(Exception):
    """The state directory cannot be used as it is (unreadable pointer, another agent holds it)."""


def pause_point(stage: str) -> None:
    """Crash-test hook: with EDGEFLEET_AGENT_TEST_PAUSE_AT=<stage>, announce the stage on stderr and hang,
    so a test can SIGKILL the process at exactly that point of a swap."""
    if os.environ.get(PAUSE_ENV) == stage:
        print(f"edgefleet-agent: paused at {stage}", file=sys.stderr, flush=True)
        time.sleep(3600)


@dataclass(frozen=True)
class SlotRef:
    slot: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Pointer:
    current: SlotRef | None = None
    previous: SlotRef | None = None

    def slots(self) -> set[str]:
        return {r.slot for r in (self.current, self.previous) if r is not None}


class SlotStore:
    def __init__(self, root: Path, model: str, durable: bool = True) -> None:
        self.root = Path(root)
        self.model = model
        self.durable = durable
        self.slots_dir = self.root / "slots"
        self.downloads_dir = self.root / "downloads"
        self.pointer_path = self.root / POINTER_FILE
        self._lock_fd: int | None = None

    # -- process exclusivity --------------------------------------------------------------------------
    def lock(self) -> None:
        """Two agents swapping models in one directory would each break the other's guarantees.

        Skipped when not durable: simulated devices share one process, where a thousand held lock
        descriptors would only exhaust the default open-file limit.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if fcntl is None or self._lock_fd is not None or not self.durable:
            return
        fd = os.open(self.root / "agent.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.root}: another agent is using this state directory; give each agent its own --state-dir") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- layout ---------------------------------------------------------------------------------------
    @staticmethod
    def slot_name(version: str, manifest_bytes: bytes, kind: str | None = None) -> str:
        """Named by the signed manifest's digest: the same signed version always lands in the same slot. A variant's
        slot ends in its kind, which names the signed digest its file is checked against at every start."""
        name = f"{version}-{hashlib.sha256(manifest_bytes).hexdigest()[:16]}"
        return name if kind in (None, REFERENCE_KIND) else f"{name}-{kind}"

    @staticmethod
    def slot_kind(slot: str) -> str:
        """The build a slot holds: the kind its name ends in, else the reference."""
        tail = slot.rsplit("-", 1)[-1]
        return tail if tail in VARIANT_KINDS else REFERENCE_KIND

    def slot_dir(self, slot: str) -> Path:
        return self.slots_dir / slot

    def slot_files(self, slot: str) -> tuple[Path, Path, Path]:
        d = self.slot_dir(slot)
        return d / MODEL_FILE, d / MANIFEST_FILE, d / SIGNATURE_FILE

    def download_path(self, slot: str) -> Path:
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        return self.downloads_dir / slot

    # -- writes ---------------------------------------------------------------------------------------
    def _fsync_file(self, path: Path) -> None:
        if self.durable:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _fsync_dir(self, path: Path) -> None:
        if self.durable:
            fsync_dir(path)

    def _write_file(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())

    def commit_slot(self, slot: str, artifact: Path, manifest_bytes: bytes, signature_bytes: bytes) -> Path:
        """Moves a verified download into a complete slot directory, published by one rename."""
        if not self.slots_dir.is_dir():
            self.slots_dir.mkdir(parents=True)
            self._fsync_dir(self.root)  # the pointer will name a slot under it: its entry must outlive a crash
        tmp = self.slots_dir / f"{TMP_PREFIX}{slot}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model_path = tmp / MODEL_FILE
        os.replace(artifact, model_path)
        self._fsync_file(model_path)
        pause_point("model-fsynced")
        self._write_file(tmp / MANIFEST_FILE, manifest_bytes)
        self._write_file(tmp / SIGNATURE_FILE, signature_bytes)
        self._fsync_dir(tmp)
        final = self.slot_dir(slot)
        if final.exists():
            shutil.rmtree(final)  # an unreferenced or corrupt slot of the same name: the caller checked
        os.replace(tmp, final)
        self._fsync_dir(self.slots_dir)
        pause_point("slot-committed")
        return final / MODEL_FILE

    def read_pointer(self) -> Pointer:
        if not self.pointer_path.exists():
            return Pointer()
        try:
            body = json.loads(self.pointer_path.read_bytes())
            if body.get("format") != POINTER_FORMAT:
                raise ValueError(f"format is {body.get('format')!r}, expected {POINTER_FORMAT!r}")
            if body.get("model") != self.model:
                raise ValueError(f"it is for model {body.get('model')!r}, this agent serves {self.model!r}")
            refs = [SlotRef(**body[k]) if body.get(k) else None for k in ("current", "previous")]
        except (ValueError, TypeError, KeyError, AttributeError, OSError) as exc:
            raise StoreError(f"{self.pointer_path}: unreadable pointer ({exc})") from None
        return Pointer(*refs)

    def write_pointer(self, pointer: Pointer) -> None:
        body = {
            "format": POINTER_FORMAT,
            "model": self.model,
            "current": asdict(pointer.current) if pointer.current else None,
            "previous": asdict(pointer.previous) if pointer.previous else None,
        }
        tmp = self.root / f".{POINTER_FILE}.tmp"
        try:
            self._write_file(tmp, (json.dumps(body, indent=2) + "\n").encode())
            pause_point("before-pointer-rename")
            os.replace(tmp, self.pointer_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir(self.root)
        pause_point("pointer-renamed")

    # -- housekeeping ---------------------------------------------------------------------------------
    def _clean_downloads(self) -> None:
        """Keeps the newest partial download that says what it is a prefix of, so that a restarted agent (or the
        retry after a dropped link) continues it rather than paying for its bytes again; the rest goes."""
        if not self.downloads_dir.is_dir():
            return
        keep: set[str] = set()
        partials = []
        for state in self.downloads_dir.glob(f"*{STATE_SUFFIX}"):
            partial = state.with_name(state.name.removesuffix(STATE_SUFFIX) + PARTIAL_SUFFIX)
            try:
                partials.append((partial.stat().st_mtime, state, partial))
            except OSError:
                continue
        if partials:
            at, state, partial = max(partials)
            if time.time() - at < PARTIAL_MAX_AGE_SECONDS:
                keep = {state.name, partial.name}
        for p in self.downloads_dir.iterdir():  # the directory itself stays: removing it each install costs more than it frees
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def clean(self, keep: set[str] | None) -> None:
        """Removes what an interrupted install left behind and every slot the pointer no longer names
        (`keep=None`: the pointer is unreadable, so only temporary files go)."""
        (self.root / f".{POINTER_FILE}.tmp").unlink(missing_ok=True)
        self._clean_downloads()
        if self.slots_dir.is_dir():
            for d in self.slots_dir.iterdir():
                if d.name.startswith(TMP_PREFIX) or (keep is not None and d.name not in keep):
                    shutil.rmtree(d, ignore_errors=True) if d.is_dir() else d.unlink(missing_ok=True)
