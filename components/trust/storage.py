"""Where a stack's TUF metadata lives: named objects under `tuf/metadata/` in the model store. A directory here;
S3 (components/aws/trust_store.py) and Azure blob (components/azure/trust_store.py) implement the same six calls."""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Protocol

from edgefleet_agent.contract.tuf import METADATA_PREFIX
from edgefleet_agent.fsutil import atomic_write_bytes, create_bytes


class MetadataStorage(Protocol):
    @property
    def url(self) -> str:
        """The metadata base URL devices fetch from (file://, s3://, https://)."""
        ...

    def read(self, name: str) -> bytes | None:
        """The object `tuf/metadata/<name>`, or None when there is none."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Replaces the object: only for the current copies `<role>.json`, which may lag (timestamp.json goes through swap)."""
        ...

    def create(self, name: str, data: bytes) -> bool:
        """Writes the object only if there is none, atomically; False when it exists. Versioned metadata is written
        this way, so two publishers cannot both write version N+1 and lose one's change."""
        ...

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        """The object and a tag that changes whenever it is replaced (its ETag), or None when there is none."""
        ...

    def swap(self, name: str, data: bytes, tag: str | None) -> bool:
        """Replaces the object only while it still carries `tag` (with None: only while there is none), atomically;
        False when another writer replaced it since it was read. timestamp.json, the one name every publish moves, is
        written this way, so a slower publisher cannot overwrite a newer timestamp with its older one."""
        ...


class DirectoryStorage:
    """The local store directory: <store>/tuf/metadata/<name>, written atomically."""

    def __init__(self, store: str | Path) -> None:
        self.root = Path(store).resolve() / METADATA_PREFIX

    @property
    def url(self) -> str:
        return self.root.as_uri() + "/"

    def read(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)

    def create(self, name: str, data: bytes) -> bool:
        return create_bytes(self.root / name, data)

    def read_tagged(self, name: str) -> tuple[bytes, str] | None:
        data = self.read(name)
        return (data, hashlib.sha256(data).hexdigest()) if data is not None else None

    def swap(self, name: str, data: bytes, tag: str | None) -> bool:
        with self._locked(name):
            found = self.read_tagged(name)
            if (found[1] if found is not None else None) != tag:
                return False
            atomic_write_bytes(self.root / name, data)
        return True

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """An exclusive flock on the sidecar `.<name>.lock`, so every local publisher's read, compare and rename is one
        step; readers need no lock (the rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
