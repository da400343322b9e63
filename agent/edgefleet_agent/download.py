"""Downloading an artifact: streamed in constant memory, hashed while it arrives, resumed after a cut, paced by a
bandwidth cap, and renamed into place only once its size and sha256 are the ones the caller pinned. Whatever the
platform, the agent downloads with this code.

The bytes go to `<dest>.part` first, beside a small `<dest>.part.json` that records which object they are a prefix
of (the URI without its query, the pinned size and digest, and the object's validator: the HTTP ETag or
Last-Modified, or a local file's size, mtime and inode). A later call for the same object continues from the
partial file's length (HTTP `Range` with `If-Range`, so a changed object is sent whole, never spliced); the bytes
the earlier run left are read back and hashed again, so nothing of it is trusted unhashed.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import http.client
import io
import json
import os
import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import unquote, urlsplit

from edgefleet_agent.contract.digest import read_buffer

CHUNK = 1 << 20
HANDOVER_BYTES = 4 * CHUNK  # written but not yet hashed: the writer waits beyond it
INLINE_HASH_BYTES = CHUNK  # artifacts up to this size are hashed in the writer's thread: starting a thread costs more
HTTP_TIMEOUT_SECONDS = 30
RETRIES = 4
BACKOFF_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 8.0
PARTIAL_SUFFIX = ".part"
STATE_SUFFIX = ".part.json"
STATE_FORMAT = "edgefleet-download/v1"
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)$")
_NO_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # splice(2) on an fd that does not support it


class FetchError(Exception):
    """A download that did not deliver the whole artifact. May succeed later, unlike a bad signature."""


class DigestMismatch(FetchError):
    """The whole artifact arrived but it is not the one pinned: downloading it again from there will not help."""

    def __init__(self, message: str, actual: str, expected: str) -> None:
        super().__init__(message)
        self.actual, self.expected = actual, expected


class _Cut(FetchError):
    """A transfer that stopped or could not start for now (connection dropped or refused, short body, a 5xx):
    the partial file is kept, and resumed by a retry or by the next call."""


def fetch(uri: str, dest: Path) -> None:
    """Streams `uri` (file:// or http(s)://) to `dest`; raises FetchError on any short or failed read."""
    download(uri, Path(dest))


def download(
    uri: str,
    dest: Path,
    expected_size: int | None = None,
    *,
    expected_sha256: str | None = None,
    max_bytes_per_second: float | None = None,
    retries: int = RETRIES,
    backoff_seconds: float = BACKOFF_SECONDS,
) -> str:
    """Fetches `uri` to `dest` and returns the sha256 of its bytes; `dest` appears only once they are complete.

    With `expected_size`, stops at the first byte past it and reports a short file as truncated, so a partial
    upload in the store or a dropped connection never reaches verification as "valid but short". With
    `expected_sha256`, a complete download with another digest is deleted and refused (DigestMismatch): a device
    must never hold an unverified artifact under the name it serves from. A connection dropped mid-transfer is
    resumed up to `retries` times, waiting `backoff_seconds`, doubling; a partial file left by a failed call is
    resumed by the next call for the same object. `max_bytes_per_second` caps the transfer rate (None: no cap).
    On failure `dest` is removed.
    """
    dest = Path(dest)
    if max_bytes_per_second is not None and max_bytes_per_second <= 0:
        raise ValueError(f"max_bytes_per_second must be positive or None, not {max_bytes_per_second}")
    bucket = _Bucket(max_bytes_per_second) if max_bytes_per_second else None
    try:
        return _Download(uri, dest, expected_size, expected_sha256, bucket, retries, backoff_seconds).run()
    except (FetchError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        # a query string can be a credential (an Azure SAS): keep it out of logs and reports
        shown = redact_uri(uri)
        if isinstance(exc, FetchError) and shown == uri:
            raise
        if isinstance(exc, DigestMismatch):
            raise DigestMismatch(str(exc).replace(uri, shown), exc.actual, exc.expected) from None
        message = str(exc).replace(uri, shown) if isinstance(exc, FetchError) else f"download failed: invalid URI {shown}"
        raise FetchError(message) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def redact_uri(uri: str) -> str:
    """`uri` with its query string (e.g. a SAS token) replaced, for messages that are logged or reported."""
    head, sep, _ = uri.partition("?")
    return f"{head}?<redacted>" if sep else uri


def partial_paths(dest: Path) -> tuple[Path, Path]:
    """Where a download to `dest` keeps its bytes and what they belong to until they verify."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX), dest.with_name(dest.name + STATE_SUFFIX)


# ---------------------------------------------------------------------------------------------------------------
# pacing and hashing
# ---------------------------------------------------------------------------------------------------------------
class _Bucket:
    """Token bucket: `rate` bytes a second on average, bursts of a tenth of a second's worth.

    The transfer reads at most a burst at a time and sleeps off any debt before the next read, so a slow reader
    is what the sender sees (TCP flow control), not a fast one that pauses now and then.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, self.rate / 10)
        self.tokens = self.burst
        self.at = time.monotonic()

    def chunk(self) -> int:
        return max(1, min(CHUNK, int(self.burst)))

    def spend(self, n: int) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - n
        self.at = now
        if self.tokens < 0:
            time.sleep(-self.tokens / self.rate)


class _Verifier(threading.Thread):
    """Hashes the artifact in order, in a thread of its own beside the writer, so that the transfer and the hashing
    overlap on two cores (hashlib and file reads release the GIL).

    The writer hands over what it wrote: the bytes it received, which are hashed as they are, or a count of bytes
    it copied in the kernel (a local file), which are read back from the partial file, as is a prefix left by an
    earlier call (never trusted unhashed). The writer waits while HANDOVER_BYTES it handed over are unhashed, so
    memory stays bounded whatever the artifact's size.

    Received bytes live in a ring of `ring` bytes allocated once (`room`): the writer reads into the part the
    hasher has finished with and hands over views of it, instead of a new 1 MiB bytes object per read: a sixth to a
    quarter of the HTTP writer's CPU, and 40-50% over TLS, which delivers at most 16 KiB a read (benchmarks/README.md).
    """

    def __init__(self, path: Path, prefix: int, threaded: bool, ring: int) -> None:
        super().__init__(name=f"hash {path.name}", daemon=True)
        self.threaded = threaded  # False: a small artifact, hashed as it is handed over (a thread would cost more)
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the thread)
        self._path = path
        self._cond = threading.Condition()
        self._pieces: collections.deque[bytes | memoryview | int] = collections.deque([prefix] if prefix else [])
        self._held = 0
        self._ring_size = max(1, ring)
        self._ring: memoryview | None = None
        self._ring_at = 0
        self._closing = self._cancelled = self._stopped = False
        self._error: OSError | None = None
        self.sha256 = hashlib.sha256()
        self.hashed = 0
        if threaded:
            self.start()

    def room(self, n: int) -> memoryview:
        """Where the writer may receive its next (up to) `n` bytes: the ring after the last view handed over, once
        the hasher is done with it. Fewer than `n` at the ring's end; hand over what arrived before the next call."""
        if self._ring is None:
            self._ring = read_buffer(self._ring_size)
        at = self._ring_at if self._ring_at < self._ring_size else 0
        want = max(1, min(n, self._ring_size - at))
        if self.threaded:
            with self._cond:
                while self._held + want > self._ring_size and not self._stopped:
                    self._cond.wait()
        self._ring_at = at + want
        return self._ring[at : at + want]

    def received(self, view: memoryview, n: int) -> None:
        """The first `n` bytes of the last `room` were written: hands them over and gives the rest back."""
        self._ring_at -= len(view) - n
        if n:
            self.hand(view[:n])

    def hand(self, piece: bytes | memoryview | int) -> None:
        """`piece` was written right after the last one: its bytes, or how many bytes to read back."""
        if not self.threaded:
            self._pieces.append(piece)
            return self._drain()
        with self._cond:
            while self._held >= HANDOVER_BYTES and not self._stopped:
                self._cond.wait()
            if self._stopped:  # it failed: finish() says why
                return
            if isinstance(piece, int) and self._pieces and isinstance(self._pieces[-1], int):
                self._pieces[-1] += piece
            else:
                self._pieces.append(piece)
                self._held += 0 if isinstance(piece, int) else len(piece)
            self._cond.notify_all()

    def _drain(self) -> None:
        """Inline: hashes what was handed over (and the prefix) at once, in the writer's thread."""
        view = read_buffer(CHUNK)
        try:
            while self._pieces:
                piece = self._pieces.popleft()
                if isinstance(piece, int):
                    self._read_back(piece, view)
                else:
                    self.sha256.update(piece)
                    self.hashed += len(piece)
        finally:
            view.release()

    def finish(self) -> str:
        if not self.threaded:
            try:
                self._drain()
            finally:
                self._file.close()
            return self.sha256.hexdigest()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.join()
        if self._error is not None:
            raise self._error
        return self.sha256.hexdigest()

    def cancel(self) -> None:
        if not self.threaded:
            self._file.close()
            return
        with self._cond:
            self._closing = self._cancelled = True
            self._cond.notify_all()
        self.join()

    def run(self) -> None:
        view = read_buffer(CHUNK)
        try:
            while True:
                with self._cond:
                    while not self._pieces and not self._closing:
                        self._cond.wait()
                    if self._cancelled or not self._pieces:
                        return
                    piece = self._pieces.popleft()
                if isinstance(piece, int):
                    self._read_back(piece, view)
                    continue
                self.sha256.update(piece)
                self.hashed += len(piece)
                with self._cond:
                    self._held -= len(piece)
                    self._cond.notify_all()
        except OSError as exc:
            self._error = exc
        finally:
            with self._cond:
                self._stopped = True
                self._cond.notify_all()
            view.release()
            self._file.close()

    def _read_back(self, count: int, view: memoryview) -> None:
        self._file.seek(self.hashed)
        end = self.hashed + count
        while self.hashed < end and not self._cancelled:
            n = self._file.readinto(view[: min(CHUNK, end - self.hashed)])
            if not n:
                raise OSError(errno.EIO, f"{self._path} ends at byte {self.hashed}, before the {end} written to it")
            self.sha256.update(view[:n])
            self.hashed += n


# ---------------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Body:
    """One response: the artifact's bytes from `start` (0 when the source sent the whole object again)."""

    start: int
    stream: io.RawIOBase | io.BufferedIOBase
    validator: dict[str, Any] | None  # what identifies this version of the object; None: it cannot be resumed
    total: int | None = None  # the object's size as the source states it
    end: int | None = None  # one past the last byte this response carries
    copy_fd: int | None = None  # a local file: copied in the kernel (copy_file_range), not through a buffer


def _http_validator(headers: Any) -> dict[str, Any] | None:
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range takes a strong validator only
        return {"etag": etag}
    modified = headers.get("Last-Modified")
    return {"last_modified": modified} if modified else None


class _Source:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        parts = urlsplit(uri)
        self.scheme = parts.scheme
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise FetchError(f"download failed: {uri} names host {parts.netloc!r}; file:// URIs must be local")
            self.path = Path(urllib.request.url2pathname(unquote(parts.path)))
        elif parts.scheme not in ("http", "https"):
            raise FetchError(f"download failed: unsupported URI scheme {parts.scheme!r} in {uri} (expected file, http or https)")

    def open(self, offset: int, validator: dict[str, Any] | None) -> _Body:
        """The object from `offset` if it is still the one `validator` names, else from its start."""
        return self._open_file(offset, validator) if self.scheme == "file" else self._open_http(offset, validator)

    def _open_file(self, offset: int, validator: dict[str, Any] | None) -> _Body:
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by the caller)
        except OSError as exc:
            raise FetchError(f"download failed: cannot open {self.uri}: {exc.strerror}") from None
        st = os.fstat(f.fileno())
        current = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
        start = offset if validator == current else 0
        f.seek(start)
        return _Body(start, f, current, copy_fd=f.fileno())

    def _open_http(self, offset: int, validator: dict[str, Any] | None) -> _Body:
        headers = {}
        if offset and validator:
            headers = {"Range": f"bytes={offset}-", "If-Range": validator.get("etag") or validator["last_modified"]}
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(
                urllib.request.Request(self.uri, headers=headers), timeout=HTTP_TIMEOUT_SECONDS
            )
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and headers:  # the partial file is no prefix of the object: fetch it whole
                return self._open_http(0, None)
            message = f"download failed: HTTP {exc.code} {exc.reason} from {self.uri}"
            raise (_Cut if exc.code in _RETRYABLE_STATUS else FetchError)(message) from None
        except (urllib.error.URLError, OSError) as exc:
            message = f"download failed: cannot reach {self.uri}: {getattr(exc, 'reason', exc)}"
            raise _Cut(message) from None
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            served = _http_validator(response.headers)
            if not headers or match is None or int(match[1]) != offset or int(match[2]) < offset or served not in (None, validator):
                # a range we did not ask for, or of another version of the object (If-Range ignored): never splice it
                response.close()
                return self._open_http(0, None)
            total = None if match[3] == "*" else int(match[3])
            return _Body(offset, response, validator, total=total, end=int(match[2]) + 1)
        length = response.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        return _Body(0, response, _http_validator(response.headers), total=declared, end=declared)


# ---------------------------------------------------------------------------------------------------------------
# one download
# ---------------------------------------------------------------------------------------------------------------
class _Download:
    def __init__(
        self,
        uri: str,
        dest: Path,
        expected_size: int | None,
        expected_sha256: str | None,
        bucket: _Bucket | None,
        retries: int,
        backoff: float,
    ) -> None:
        self.uri, self.dest = uri, dest
        self.expected_size, self.expected_sha256 = expected_size, expected_sha256
        self.bucket, self.retries, self.backoff = bucket, retries, backoff
        self.source = _Source(uri)
        self.partial, self.state_path = partial_paths(dest)
        self.identity = {"format": STATE_FORMAT, "source": uri.partition("?")[0], "size": expected_size, "sha256": expected_sha256}

    def run(self) -> str:
        offset, validator = self._resumable()
        try:
            digest = self._transfer(offset, validator)
            if offset and self.expected_sha256 is not None and digest != self.expected_sha256:
                self._discard()  # what differs may be the earlier run's bytes (a crash, a bad disk): fetch it all once
                digest = self._transfer(0, None)
        except _Cut:
            if not self.state_path.exists():
                self._discard()  # nothing says what these bytes are a prefix of
            raise
        except Exception:
            self._discard()
            raise
        if self.expected_sha256 is not None and digest != self.expected_sha256:
            self._discard()
            raise DigestMismatch(
                f"sha256 mismatch: {self.uri} delivered an artifact with sha256 {digest}, but {self.expected_sha256} is pinned "
                "(the store holds other bytes than the signed manifest names: publish the artifact again)",
                digest,
                self.expected_sha256,
            )
        os.replace(self.partial, self.dest)
        self.state_path.unlink(missing_ok=True)
        return digest

    def _resumable(self) -> tuple[int, dict[str, Any] | None]:
        """Where a partial file from an earlier call lets this one start, and the validator it was fetched under."""
        try:
            state = json.loads(self.state_path.read_text())
            size = self.partial.stat().st_size
        except (OSError, ValueError):
            self._discard()
            return 0, None
        same = isinstance(state, dict) and {k: state.get(k) for k in self.identity} == self.identity
        if not same or not isinstance(state.get("validator"), dict) or (self.expected_size is not None and size > self.expected_size):
            self._discard()
            return 0, None
        return size, state["validator"]

    def _discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _transfer(self, pos: int, validator: dict[str, Any] | None) -> str:
        """Fills the partial file from `pos` to the end of the object, resuming after cuts; returns its sha256."""
        self.pos, self._out = pos, self._open_partial(pos)
        try:
            self._verifier = self._new_verifier(pos)
            try:
                self._attempts(validator)
                return self._verifier.finish()
            finally:
                if self._verifier.is_alive() or not self._verifier.threaded:
                    self._verifier.cancel()
        finally:
            self._out.close()

    def _open_partial(self, pos: int) -> BinaryIO:
        """The partial file holding its first `pos` bytes, positioned after them.

        Starting over makes a new file instead of truncating the old one to zero: ext4 (auto_da_alloc) writes out a
        file truncated to zero when it is closed, which made a 512 MiB fetch wait 0.37 s for the disk, longer than the
        copy itself (benchmarks/README.md, artifact_bench.py).
        """
        if not pos:
            self.partial.unlink(missing_ok=True)
            return open(self.partial, "wb", buffering=0)  # noqa: SIM115 (closed by _transfer)
        out = open(self.partial, "r+b", buffering=0)  # noqa: SIM115 (closed by _transfer)
        out.truncate(pos)
        out.seek(pos)
        return out

    def _new_verifier(self, prefix: int) -> _Verifier:
        if self.expected_size is not None and self.expected_size <= INLINE_HASH_BYTES:
            return _Verifier(self.partial, prefix, threaded=False, ring=self.expected_size + 1)
        return _Verifier(self.partial, prefix, threaded=True, ring=HANDOVER_BYTES)

    def _restart(self) -> None:
        """The source sends the object from its first byte: what the partial file holds may be of another version."""
        self._verifier.cancel()
        self._out.close()
        self.pos, self._out = 0, self._open_partial(0)
        self._verifier = self._new_verifier(0)

    def _attempts(self, validator: dict[str, Any] | None) -> None:
        cuts, best = 0, self.pos
        while not (self.pos and self.pos == self.expected_size):  # a partial file already whole needs only its hash
            body: _Body | None = None
            try:
                body = self.source.open(self.pos, validator)
                with body.stream:
                    if body.start != self.pos:
                        self._restart()
                    if body.validator != validator or not self.state_path.exists():
                        validator = body.validator
                        self._save_state(validator)
                    if self._pump(body):
                        return
            except _Cut as exc:
                if body is None and not cuts:
                    raise  # no store to talk to: the agent's own, longer backoff retries; the partial file stays
                cuts += 1
                # a response that brought nothing new means the source itself is short: retrying will not help
                if cuts > self.retries or (cuts > 1 and body is not None and self.pos <= best):
                    tried = f" ({cuts - 1} {'retry' if cuts == 2 else 'retries'})" if cuts > 1 else ""
                    raise _Cut(f"{exc}{tried}") from None
                best = max(best, self.pos)
                time.sleep(min(BACKOFF_MAX_SECONDS, self.backoff * 2 ** (cuts - 1)))

    def _save_state(self, validator: dict[str, Any] | None) -> None:
        if validator is None:
            self.state_path.unlink(missing_ok=True)
        else:
            self.state_path.write_text(json.dumps({**self.identity, "validator": validator}))

    def _pump(self, body: _Body) -> bool:
        """Copies one response to the partial file, advancing `pos`; returns whether the object is complete."""
        with ExitStack() as pipes:
            return self._pump_body(body, pipes)

    def _pump_body(self, body: _Body, pipes: ExitStack) -> bool:
        want = self.expected_size if self.expected_size is not None else body.total
        out, copy_fd = self._out, body.copy_fd
        receive = _receiver(body.stream)
        splice: _Splice | None = None
        while True:
            n = self.bucket.chunk() if self.bucket else CHUNK
            if body.end is not None:
                n = min(n, body.end - self.pos)
            if self.expected_size is not None:
                n = min(n, self.expected_size + 1 - self.pos)  # one byte past the pin says "too large"
            if n <= 0:
                break
            cut, data, got, room = None, b"", 0, None
            try:
                if copy_fd is not None:
                    got = _copy_range(copy_fd, out.fileno(), n)
                    if got <= 0:  # unsupported here, or a file system that says 0 too early: let read() find the end
                        copy_fd = None
                        continue
                elif splice is not None and splice.usable:
                    got = splice.move(out, n)
                    if got < 0:
                        continue
                elif receive is not None:
                    room = self._verifier.room(n)
                    got = receive(room) or 0
                else:
                    # read1: what has arrived, so a stall loses nothing already received
                    data = body.stream.read1(n)  # type: ignore[union-attr]
                    got = len(data)
                    if got < n and receive is None:
                        receive = _receiver(body.stream, drained=True)
                        splice = _Splice.of(body.stream)
                        if splice is not None:
                            pipes.callback(splice.close)
            except http.client.IncompleteRead as exc:
                data = exc.partial
                got = len(data)
                cut = f"download truncated: {self.pos + got} of {want or '?'} bytes from {self.uri} (connection closed early)"
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the partial file's disk, not the source
                    raise
                cut = f"download failed after {self.pos} bytes from {self.uri}: {exc}"
            if room is not None:
                _write_all(out, room[:got])
                self._verifier.received(room, got)
            elif data:
                _write_all(out, memoryview(data))
            if got:
                self.pos += got
                if room is None:
                    self._verifier.hand(data or got)
            if self.expected_size is not None and self.pos > self.expected_size:
                raise FetchError(f"download too large: more than the {self.expected_size} bytes the signed manifest pins, from {self.uri}")
            if cut:
                raise _Cut(cut)
            if not got:
                break
            if self.bucket:
                self.bucket.spend(got)
        if want is not None and self.pos < want:
            if body.end is not None and self.pos == body.end:
                return False  # a range that ends before the object does: ask for the rest
            message = f"download truncated: {self.pos} of {want} bytes from {self.uri}"
            raise (FetchError if self.source.scheme == "file" else _Cut)(message)
        return True


class _Splice:
    """A plain-HTTP body moved from the socket to the partial file in the kernel (Linux `splice(2)` through a pipe)
    instead of received into a buffer and written out of it: those two copies were the writer's CPU, and the writer
    kept an HTTP fetch over max(cp, openssl) while the store's server shared the two cores (benchmarks/README.md,
    artifact_bench.py). The hasher reads the bytes back from the page cache, as it does a local file's.

    Only once the response's own buffer is drained (`_receiver`), never over TLS (the socket holds ciphertext), and
    never where `os.splice` is missing. A file system that refuses it turns it off (`usable`) after moving what the
    pipe already holds by read and write; the response goes on through the buffer.
    """

    def __init__(self, response: http.client.HTTPResponse, sock: socket.socket) -> None:
        self._response, self._sock = response, sock
        self._timeout = sock.gettimeout()
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        self.usable = True
        try:
            fcntl.fcntl(self._write, fcntl.F_SETPIPE_SZ, CHUNK)  # 64 KiB by default: sixteen times the calls
        except (AttributeError, OSError):
            pass

    @classmethod
    def of(cls, stream: io.RawIOBase | io.BufferedIOBase) -> _Splice | None:
        raw = getattr(getattr(stream, "fp", None), "raw", None)
        sock = getattr(raw, "_sock", None)
        if not hasattr(os, "splice") or not isinstance(stream, http.client.HTTPResponse) or stream.chunked:
            return None
        if type(sock) is not socket.socket:  # an ssl.SSLSocket, or a SocketIO this code does not know
            return None
        return cls(stream, sock)

    def move(self, file: BinaryIO, n: int) -> int:
        """Up to `n` bytes of the body, from the socket to `file`'s position; 0 at its end, -1 if the socket refuses."""
        length = self._response.length
        n = n if length is None else min(n, length)
        if n <= 0:
            return 0
        out = file.fileno()
        start = os.lseek(out, 0, os.SEEK_CUR)
        got = self._from_socket(n)
        if got < 0:
            return got
        moved = 0
        try:
            while moved < got:
                moved += os.splice(self._read, out, got - moved)
        except OSError as exc:
            if exc.errno not in _NO_SPLICE:
                # the caller counts nothing of this piece: the file must not hold part of it either (a retry asks
                # for the rest from where the caller's count ends)
                os.ftruncate(out, start)
                os.lseek(out, start, os.SEEK_SET)
                raise
            self.usable = False
            while moved < got:
                piece = os.read(self._read, got - moved)
                _write_all(file, memoryview(piece))
                moved += len(piece)
        if length is not None:
            self._response.length = length - got
        return got

    def _from_socket(self, n: int) -> int:
        fd = self._sock.fileno()
        while True:
            try:
                return os.splice(fd, self._write, n)
            except BlockingIOError:  # a socket with a timeout is non-blocking underneath
                poll = select.poll()
                poll.register(fd, select.POLLIN)
                if not poll.poll(None if self._timeout is None else self._timeout * 1000):
                    raise TimeoutError(errno.ETIMEDOUT, "timed out") from None
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise
                self.usable = False
                return -1  # nothing moved: the buffer takes over

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


def _receiver(stream: io.RawIOBase | io.BufferedIOBase, drained: bool = False) -> Callable[[memoryview], int | None] | None:
    """How to read a response's next bytes into a given buffer with one read (what has arrived, so a stall or a cut
    loses nothing already received); None: through `read1`, which returns a new bytes object each time.

    An HTTP body of known framing is read from the socket itself (`recv_into`; over TLS, decrypted into the
    buffer), but only once `read1` came back short, which says the response's own read buffer, which may hold the
    body's first bytes, is empty; like `read1`, it stops at the response's Content-Length. A chunked body stays
    with `read1`, which parses the framing.
    """
    if not isinstance(stream, http.client.HTTPResponse):
        return stream.readinto
    raw = getattr(stream.fp, "raw", None)
    if not drained or stream.chunked or not isinstance(raw, socket.SocketIO):
        return None
    if stream.length is None:
        return raw.readinto
    response, recv_into = stream, raw.readinto

    def receive(view: memoryview) -> int | None:
        got = recv_into(view[: response.length])
        if got and response.length is not None:
            response.length -= got
        return got

    return receive


def _copy_range(src: int, dst: int, n: int) -> int:
    """Copies up to `n` bytes from `src`'s position to `dst`'s in the kernel; -1 where that is not supported.

    Measured here (ext4 in a VM, benchmarks/README.md): half the CPU of read() and write() through a buffer, and
    steady where write() from user memory sometimes costs four times as much.
    """
    try:
        return os.copy_file_range(src, dst, n)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise
        return -1


def _write_all(out: BinaryIO, data: memoryview) -> None:
    while data:
        written = out.write(data)
        data = data[written or 0 :]
