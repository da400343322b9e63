"""Rebuilding a model version from the previous one and a patch, instead of downloading it whole.

The patch (format `cdc-xz-1`, written by the publisher's `components.delta.make_patch`) lists the new file as a
sequence of copies of byte ranges of the old file and of literal runs; the literals follow as one xz stream.
Why this format (benchmarks/delta_bench.py, docs/deltas.md): on a model whose last layer was retrained it ships as
few bytes as bsdiff or zstd --patch-from, but applying it streams both files, so its memory does not grow with the
model (bsdiff holds old and new in memory; a zstd patch needs a window spanning the file), and it needs nothing
beyond the standard library on the device.

The rebuilt file is trusted exactly as a full download is: only once its size and sha256 equal the signed pins.
Every failure raises PatchError, on which the caller downloads the full artifact.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from edgefleet_agent.contract.digest import sha256_file
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.fsutil import fsync_dir

METHOD = "cdc-xz-1"
MAGIC = b"EFPATCH1"
COPY, LITERAL = 0, 1
# magic, from_size, to_size, from_sha256, to_sha256, op count, literal bytes, xz dictionary size
HEADER = struct.Struct("<8sQQ32s32sIQI")
OP = struct.Struct("<BQQ")  # kind, offset in the old file (0 for a literal), length
PIECE = 1 << 18  # bytes copied or decompressed at a time
READ = 1 << 16  # bytes of the xz stream fed to the decoder at a time
BUFFERS = 2 * PIECE + READ  # what applying holds besides the xz decoder
DECODER_STATE = 1 << 17  # what liblzma counts beside the dictionary (64 KiB and 56 bytes in 5.x), with room to spare

Reason = Literal["format", "base", "target", "memory", "corrupt", "digest", "io"]


class PatchError(EdgefleetError):
    """A patch that does not rebuild the pinned artifact on this device; the caller downloads the full artifact."""

    def __init__(self, where: str, reason: Reason, problem: str, fix: str) -> None:
        self.reason = reason
        super().__init__(where, problem, fix)


@dataclass(frozen=True)
class PatchHeader:
    from_size: int
    to_size: int
    from_sha256: str
    to_sha256: str
    ops: int
    literal_size: int
    dict_size: int

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            self.from_size,
            self.to_size,
            bytes.fromhex(self.from_sha256),
            bytes.fromhex(self.to_sha256),
            self.ops,
            self.literal_size,
            self.dict_size,
        )

    @classmethod
    def unpack(cls, data: bytes, where: str) -> PatchHeader:
        if len(data) < HEADER.size or not data.startswith(MAGIC):
            raise PatchError(
                where,
                "format",
                f"not a {METHOD} patch (no {MAGIC.decode()} header)",
                "download the full artifact; a patch in another format needs a newer agent",
            )
        _, from_size, to_size, from_sha, to_sha, ops, literal_size, dict_size = HEADER.unpack(data[: HEADER.size])
        return cls(from_size, to_size, from_sha.hex(), to_sha.hex(), ops, literal_size, dict_size)

    @property
    def memory_needed(self) -> int:
        """Bytes applying holds at once, whatever the model's size: the xz dictionary, the decoder, two buffers."""
        return self.dict_size + DECODER_STATE + BUFFERS


def read_header(patch_path: Path) -> PatchHeader:
    """The header alone: what the patch applies to, what it rebuilds, and the memory it needs."""
    with open(patch_path, "rb") as f:
        return PatchHeader.unpack(f.read(HEADER.size), str(patch_path))


def apply_patch(
    old_path: str | os.PathLike[str],
    patch_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    expected_sha256: str,
    expected_size: int,
    max_memory_bytes: int | None = None,
) -> None:
    """Rebuilds `out_path` from `old_path` and the patch, and renames it into place only once its size and
    sha256 equal `expected_size` and `expected_sha256` (the signed pins).

    Raises PatchError, leaving `out_path` untouched, when the patch was built from another base, rebuilds another
    artifact, is damaged, or needs more than `max_memory_bytes` of working memory.
    """
    old, patch, out = Path(old_path), Path(patch_path), Path(out_path)
    where, full = str(patch), "download the full artifact"
    try:
        header = read_header(patch)
    except OSError as exc:
        raise PatchError(where, "format", f"cannot read the patch: {exc.strerror}", full) from None
    if (header.to_sha256, header.to_size) != (expected_sha256, expected_size):
        raise PatchError(
            where,
            "target",
            f"the patch rebuilds sha256 {header.to_sha256} ({header.to_size} bytes), but the signed metadata pins "
            f"{expected_sha256} ({expected_size} bytes)",
            f"{full}; the store lists a patch for another version",
        )
    if max_memory_bytes is not None and header.memory_needed > max_memory_bytes:
        raise PatchError(
            where,
            "memory",
            f"applying needs {header.memory_needed} bytes of memory; this device allows {max_memory_bytes}",
            f"{full}, or raise the device's declared memory",
        )
    try:
        base_sha256, base_size = sha256_file(old)
    except OSError as exc:
        raise PatchError(where, "base", f"cannot read the base {old}: {exc.strerror}", full) from None
    if (base_sha256, base_size) != (header.from_sha256, header.from_size):
        raise PatchError(
            where,
            "base",
            f"the patch applies to sha256 {header.from_sha256} ({header.from_size} bytes), but the base {old} has "
            f"{base_sha256} ({base_size} bytes)",
            f"{full}; this patch is for a device on another version",
        )
    memlimit = None if max_memory_bytes is None else max(max_memory_bytes - BUFFERS, 1)
    # named per process and thread, created like a download's file (mode 0666 less the umask)
    tmp = out.with_name(f".{out.name}.patching-{os.getpid()}-{threading.get_ident()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            with open(tmp, "xb") as sink:
                digest, size = _rebuild(header, old, patch, sink, memlimit)
                sink.flush()
                os.fsync(sink.fileno())
        except OSError as exc:
            raise PatchError(where, "io", f"rebuilding {out} failed: {exc}", f"{full}; check the disk under {out.parent}") from None
        if (digest, size) != (expected_sha256, expected_size):
            raise PatchError(
                where,
                "digest",
                f"the rebuilt file has sha256 {digest} ({size} bytes), but the signed metadata pins {expected_sha256} "
                f"({expected_size} bytes)",
                f"{full}; the patch or the base is damaged",
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def _rebuild(header: PatchHeader, old: Path, patch: Path, sink: BinaryIO, memlimit: int | None) -> tuple[str, int]:
    """Writes the new file to `sink`, op by op, and returns its sha256 and size."""
    where = str(patch)
    digest = hashlib.sha256()
    written = copied = literal = 0
    ops_end = HEADER.size + header.ops * OP.size
    with open(old, "rb") as base, open(patch, "rb") as table, open(patch, "rb") as stream:
        if os.fstat(stream.fileno()).st_size < ops_end:
            raise _corrupt(where, f"it is shorter than its table of {header.ops} operations")
        table.seek(HEADER.size)
        stream.seek(ops_end)
        literals = _Literals(stream, memlimit, where)
        for index in range(header.ops):
            raw = table.read(OP.size)
            if len(raw) != OP.size:
                raise _corrupt(where, f"its table of operations ends at operation {index}")
            kind, offset, length = OP.unpack(raw)
            if written + length > header.to_size:
                raise _corrupt(where, f"operation {index} writes past the {header.to_size} bytes the patch rebuilds")
            if kind == COPY:
                if offset + length > header.from_size:
                    raise _corrupt(where, f"operation {index} copies bytes {offset}..{offset + length} of a {header.from_size}-byte base")
                base.seek(offset)
                pieces: Iterator[bytes] = _read_exactly(base, length, old)
                copied += length
            elif kind == LITERAL and offset == 0:
                if literal + length > header.literal_size:
                    raise _corrupt(where, f"operation {index} takes more than the {header.literal_size} literal bytes the header declares")
                pieces = literals.take(length)
                literal += length
            else:
                raise _corrupt(where, f"operation {index} has unknown kind {kind} (offset {offset})")
            for piece in pieces:
                digest.update(piece)
                sink.write(piece)
            written += length
        if written != header.to_size or literal != header.literal_size:
            raise _corrupt(
                where,
                f"its operations write {written} bytes ({literal} literal); the header declares {header.to_size} ({header.literal_size})",
            )
        literals.finish()
    return digest.hexdigest(), written


class _Literals:
    """The xz stream of literal bytes, decompressed piece by piece within the memory limit."""

    def __init__(self, stream: BinaryIO, memlimit: int | None, where: str) -> None:
        self._stream = stream
        self._where = where
        self._decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=memlimit)

    def take(self, length: int) -> Iterator[bytes]:
        while length:
            piece = self._decompress(min(length, PIECE))
            if not piece:
                raise _corrupt(self._where, "its literal stream ends early")
            length -= len(piece)
            yield piece

    def finish(self) -> None:
        """The stream must end exactly after the declared literals: trailing bytes mean a damaged patch."""
        while not self._decoder.eof:
            if self._decompress(1):
                raise _corrupt(self._where, "its literal stream holds more bytes than its operations use")
        if self._decoder.unused_data or self._stream.read(1):
            raise _corrupt(self._where, "bytes follow its literal stream")

    def _decompress(self, most: int) -> bytes:
        data = b""
        while not data and not self._decoder.eof:
            chunk = b""
            if self._decoder.needs_input:
                chunk = self._stream.read(READ)
                if not chunk:
                    raise _corrupt(self._where, "it ends inside its literal stream (truncated)")
            try:
                data = self._decoder.decompress(chunk, max_length=most)
            except lzma.LZMAError as exc:
                if "memory" in str(exc).lower():
                    raise PatchError(
                        self._where,
                        "memory",
                        "its literal stream needs a larger xz dictionary than the device's declared memory allows",
                        "download the full artifact, or raise the device's declared memory",
                    ) from None
                raise _corrupt(self._where, f"its literal stream does not decompress: {exc}") from None
        return data


def _read_exactly(f: BinaryIO, length: int, path: Path) -> Iterator[bytes]:
    while length:
        piece = f.read(min(length, PIECE))
        if not piece:
            raise OSError(f"{path} ended {length} bytes early (it changed while the patch was applied)")
        length -= len(piece)
        yield piece


def _corrupt(where: str, problem: str) -> PatchError:
    return PatchError(
        where, "corrupt", f"damaged patch: {problem}", "download the full artifact; if every device refuses it, publish the patch again"
    )
