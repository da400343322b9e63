"""Where a stack's TUF metadata lives: named objects under `tuf/metadata/` in the model store. A directory here;
S3 (components/aws/trust_store.py) and Azure blob (components/azure/trust_store.py) implement the same four calls."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

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
        """Replaces the object: only for names that move (timestamp.json, the current copies)."""
        ...

    def create(self, name: str, data: bytes) -> bool:
        """Writes the object only if there is none, atomically; False when it exists. Versioned metadata is written
        this way, so two publishers cannot both write version N+1 and lose one's change."""
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
