"""Streaming SHA-256: constant memory whatever the model's size."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk: int = CHUNK) -> tuple[str, int]:
    """Returns (hex digest, size in bytes), reading into one reused buffer.

    Measured against `openssl dgst -sha256` on a 512 MiB file (benchmarks/artifact_bench.py and its README):
    0.85-1.00x its time as the publisher's hash step. file_digest, bigger buffers and a reader thread were not
    reliably faster; mmap was 9-21% faster, but it turns a read error or a file truncated meanwhile into SIGBUS,
    which no caller could report.
    """
    h = hashlib.sha256()
    view = read_buffer(chunk)
    size = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def read_buffer(size: int) -> memoryview:
    """A buffer to read a file or a socket into, piece by piece: page-aligned, wherever the allocator would put it.

    Where it starts matters: on this project's 2-core machines (AMD EPYC under KVM) the kernel copies file pages into
    a buffer 16 bytes past a 32-byte boundary four times slower than into an aligned one (512 MiB from the page
    cache: 0.22 s against 0.055 s), and a process's first 1 MiB `bytearray` starts exactly there (glibc maps it
    whole, behind a 16-byte header). That copy was what kept the publisher's hash and the device's fetch over
    `openssl dgst` (benchmarks/README.md, artifact_bench.py). Anonymous mmap memory starts on a page.
    """
    return memoryview(mmap.mmap(-1, max(1, size)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def same_file_digest(path: Path, sha256: str, size: int) -> str | None:
    """Returns None when the file matches, else a sentence saying how it differs."""
    if not path.exists():
        return f"{path} does not exist"
    actual_size = path.stat().st_size
    if actual_size != size:
        return f"{path} is {actual_size} bytes but the manifest says {size} (truncated or replaced file)"
    digest, _ = sha256_file(path)
    if digest != sha256:
        return f"{path} has sha256 {digest} but the manifest pins {sha256}"
    return None
