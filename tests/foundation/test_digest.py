"""Streaming sha256 (constant memory) and crash-safe writes."""

from __future__ import annotations

import builtins
import hashlib
import os
import tracemalloc

import pytest

from edgefleet_agent.contract import digest
from edgefleet_agent.contract.digest import CHUNK, same_file_digest, sha256_bytes, sha256_file
from edgefleet_agent.fsutil import atomic_copy, atomic_write_bytes


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345])
def test_sha256_file_matches_hashlib(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == (hashlib.sha256(data).hexdigest(), size)
    assert sha256_file(path, chunk=4096) == (hashlib.sha256(data).hexdigest(), size)
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest()


class ReadSpy:
    """Wraps the file object sha256_file opens and records how many bytes each read may return."""

    def __init__(self, f, calls: list[tuple[str, int]]):
        self._f, self._calls = f, calls

    def readinto(self, buf):
        self._calls.append(("readinto", len(buf)))
        return self._f.readinto(buf)

    def read(self, n=-1):
        self._calls.append(("read", n))
        return self._f.read(n)

    def readall(self):
        self._calls.append(("readall", -1))
        return self._f.readall()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_sha256_file_streams_in_bounded_reads(tmp_path, monkeypatch):
    """The file is read in chunks of at most CHUNK bytes; no call ever asks for the whole file."""
    size = 5 * CHUNK + 777
    path = tmp_path / "big"
    path.write_bytes(os.urandom(size))
    calls: list[tuple[str, int]] = []
    real_open = builtins.open
    monkeypatch.setattr(digest, "open", lambda *a, **k: ReadSpy(real_open(*a, **k), calls), raising=False)
    assert sha256_file(path)[1] == size
    assert calls, "sha256_file did not read through the opened file"
    assert all(kind in ("read", "readinto") and 0 < n <= CHUNK for kind, n in calls), calls
    assert len(calls) >= size // CHUNK + 1  # many bounded reads, not one big one


def test_sha256_file_memory_does_not_grow_with_the_file(tmp_path):
    size = 48 << 20
    path = tmp_path / "big"
    with open(path, "wb") as f:
        for _ in range(size // (4 << 20)):
            f.write(os.urandom(4 << 20))
    tracemalloc.start()
    try:
        sha256_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * CHUNK + (256 << 10), f"peak {peak} bytes for a {size}-byte file"


def test_same_file_digest_explains_the_difference(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert same_file_digest(path, good, 3) is None
    assert same_file_digest(tmp_path / "none.onnx", good, 3) == f"{tmp_path / 'none.onnx'} does not exist"
    assert same_file_digest(path, good, 4) == f"{path} is 3 bytes but the manifest says 4 (truncated or replaced file)"
    assert same_file_digest(path, "0" * 64, 3) == f"{path} has sha256 {good} but the manifest pins {'0' * 64}"


def test_atomic_write_replaces_whole_file_and_cleans_up(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


def test_atomic_write_mode_applies_from_creation(tmp_path):
    path = tmp_path / "secret"
    atomic_write_bytes(path, b"k", mode=0o600)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_bytes(path, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no temporary file left behind


def test_atomic_copy(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * (1 << 20) + 5))
    dst = tmp_path / "out" / "dst.bin"
    atomic_copy(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["dst.bin"]
