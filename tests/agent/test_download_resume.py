"""Resumable, paced, verified downloads, against a localhost store that misbehaves as real links and stores do.

Each test names the fault and what the downloader does about it; whatever happens, `dest` holds either nothing or
exactly the pinned bytes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.server
import json
import os
import stat
import threading
import time
from dataclasses import dataclass, field

import pytest
from agent_testkit import artifact_bytes

import edgefleet_agent.download as dl
from edgefleet_agent.download import DigestMismatch, FetchError, download, partial_paths
from edgefleet_agent.store import SlotStore

MB = 1_000_000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body(n: int, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"x" * (n % 32)


@dataclass
class Version:
    data: bytes
    etag: str | None = '"v1"'


@dataclass
class Obj:
    """One artifact and, per request (the last entry repeating), how the store answers it."""

    versions: list[Version]
    cuts: list[int | None] = field(default_factory=lambda: [None])  # bytes of the response sent before hanging up
    ranges: bool = True  # False: Range is ignored and the whole object sent with 200
    honour_if_range: bool = True  # False: a broken cache that serves the range of whatever it now holds
    chunked: bool = False
    stall: list[float] = field(default_factory=lambda: [0.0])  # seconds of silence after the first 256 KB
    trickle: float = 0.0  # seconds between 64 KB pieces
    fail: list[int | None] = field(default_factory=lambda: [None])  # an error status to answer with instead


@dataclass
class Request:
    range: str | None
    if_range: str | None
    status: int


class Store:
    """An HTTP store on localhost with Range support and scripted faults (ThreadingHTTPServer)."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.requests: list[Request] = []
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                obj = store.objects[self.path.partition("?")[0]]
                i = len(store.requests)
                version = obj.versions[min(i, len(obj.versions) - 1)]
                cut = obj.cuts[min(i, len(obj.cuts) - 1)]
                stall = obj.stall[min(i, len(obj.stall) - 1)]
                data, start, status = version.data, 0, 200
                asked, if_range = self.headers.get("Range"), self.headers.get("If-Range")
                fail = obj.fail[min(i, len(obj.fail) - 1)]
                if fail:
                    store.requests.append(Request(asked, if_range, fail))
                    self.send_error(fail)
                    return
                if asked and obj.ranges and (if_range in (None, version.etag) or not obj.honour_if_range):
                    start, status = int(asked.removeprefix("bytes=").rstrip("-")), 206
                store.requests.append(Request(asked, if_range, status))
                self.send_response(status)
                if version.etag:
                    self.send_header("ETag", version.etag)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if obj.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                payload = data[start:] if cut is None else data[start : start + cut]
                for at in range(0, len(payload), 64 << 10):
                    piece = payload[at : at + (64 << 10)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if obj.chunked else piece)
                    if stall and at >= 256 << 10:
                        time.sleep(stall)
                        stall = 0
                    if obj.trickle:
                        time.sleep(obj.trickle)
                if obj.chunked and cut is None:
                    self.wfile.write(b"0\r\n\r\n")
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def put(self, name: str, obj: Obj) -> str:
        self.objects[f"/{name}"] = obj
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}?sig=secret"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def store():
    s = Store()
    yield s
    s.close()


def splice_side(src: int) -> str:
    """Which half of the downloader's splice a call is: from the socket into its pipe, or from the pipe to the file."""
    return "pipe->file" if stat.S_ISFIFO(os.fstat(src).st_mode) else "socket->pipe"


@pytest.fixture(params=["splice", "buffer"])
def http_path(request, monkeypatch) -> list[str]:
    """How a plain-HTTP body reaches the partial file: moved in the kernel (Linux splice(2)), or received into the
    hasher's ring and written from it (elsewhere, and over TLS). Yields the sides of each splice call made."""
    calls: list[str] = []
    if request.param == "buffer":
        monkeypatch.delattr(os, "splice", raising=False)
        yield calls
        return
    if not hasattr(os, "splice"):
        pytest.skip("os.splice is Linux's")
    real = os.splice

    def counted(src, dst, count, *args, **kwargs):
        calls.append(splice_side(src))
        return real(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", counted)
    yield calls
    assert "socket->pipe" in calls and "pipe->file" in calls, "the body did not go through the kernel"


def leftovers(dest) -> list[str]:
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(dest.name))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_connection_cut_three_times_resumes_with_ranges(tmp_path, store, chunked):
    """Fault: the link drops after 700 KB, three times in a row. The download continues each time from the bytes
    it holds (Range + If-Range with the first ETag) and never fetches them twice; the result is whole and pinned."""
    data = body(3 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[700_000, 700_000, 700_000, None], chunked=chunked))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert dest.read_bytes() == data and leftovers(dest) == ["m.onnx"]
    assert [(r.range, r.if_range, r.status) for r in store.requests] == [
        (None, None, 200),
        ("bytes=700000-", '"v1"', 206),
        ("bytes=1400000-", '"v1"', 206),
        ("bytes=2100000-", '"v1"', 206),
    ]


def test_a_store_without_ranges_is_read_again_from_the_start(tmp_path, store):
    """Fault: the store ignores Range and answers 200 with the whole object. The partial bytes are dropped and the
    body is taken from its first byte, never appended to what was there (that would duplicate the first 1 MB)."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[MB, None], ranges=False))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert dest.read_bytes() == data
    assert [(r.range, r.status) for r in store.requests] == [(None, 200), (f"bytes={MB}-", 200)]


def test_an_object_changed_between_attempts_is_never_spliced(tmp_path, store):
    """Fault: the object is replaced (new ETag) after the first attempt was cut. If-Range makes the store send the
    new object whole, so the file is exactly the new object; pinned to the old digest, it is refused and removed."""
    old, new = body(2 * MB, seed=1), body(2 * MB, seed=2)
    uri = store.put("m.onnx", Obj([Version(old, '"old"'), Version(new, '"new"')], cuts=[MB, None]))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(new), backoff_seconds=0.01) == sha(new)
    assert dest.read_bytes() == new
    assert [(r.if_range, r.status) for r in store.requests] == [(None, 200), ('"old"', 200)]

    store.requests.clear()
    uri = store.put("pinned.onnx", Obj([Version(old, '"old"'), Version(new, '"new"')], cuts=[MB, None]))
    dest = tmp_path / "pinned.onnx"
    with pytest.raises(DigestMismatch, match=f"sha256 mismatch: .* delivered an artifact with sha256 {sha(new)}, but {sha(old)}"):
        download(uri, dest, len(old), expected_sha256=sha(old), backoff_seconds=0.01)
    assert leftovers(dest) == []


def test_a_range_of_another_version_is_refused_even_if_the_store_sends_it(tmp_path, store):
    """Fault: a broken cache ignores If-Range and sends 206 with the range of the object it now holds (another
    ETag). The 206 is not spliced on: the downloader asks again without a range and gets the new object whole."""
    old, new = body(2 * MB, seed=1), body(2 * MB, seed=2)
    uri = store.put("m.onnx", Obj([Version(old, '"old"'), Version(new, '"new"')], cuts=[MB, None], honour_if_range=False))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(new), backoff_seconds=0.01) == sha(new)
    assert dest.read_bytes() == new
    assert [(r.range, r.status) for r in store.requests] == [(None, 200), (f"bytes={MB}-", 206), (None, 200)]


def test_wrong_bytes_are_refused_and_nothing_is_left(tmp_path, store):
    """Attack: the store (or a man in the middle) serves other bytes of the pinned size. The download completes,
    the digest differs, DigestMismatch is raised with the URI redacted, and neither dest nor any partial remains."""
    good, evil = body(MB, seed=1), body(MB, seed=666)
    uri = store.put("m.onnx", Obj([Version(evil)]))
    dest = tmp_path / "m.onnx"
    with pytest.raises(DigestMismatch) as err:
        download(uri, dest, len(good), expected_sha256=sha(good))
    assert (err.value.actual, err.value.expected) == (sha(evil), sha(good))
    assert "secret" not in str(err.value) and "?<redacted>" in str(err.value)
    assert leftovers(dest) == []


def test_a_resumed_partial_is_hashed_again_not_trusted(tmp_path, store):
    """Fault: a partial file left by an earlier call was damaged on disk (a crash, a bad card) before this call
    resumes it. The digest covers the partial file's bytes as they are now, so the damage is caught; the download
    is then fetched whole once and verifies."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[MB, None]))
    dest = tmp_path / "m.onnx"
    with pytest.raises(FetchError, match=r"download truncated: 1000000 of 2000000 bytes from http://.*\?<redacted>"):
        download(uri, dest, len(data), expected_sha256=sha(data), retries=0)
    partial, state = partial_paths(dest)
    assert partial.stat().st_size == MB and json.loads(state.read_text())["validator"] == {"etag": '"v1"'}
    assert not dest.exists()
    with open(partial, "r+b") as f:
        f.seek(1234)
        f.write(b"!")
    assert download(uri, dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert dest.read_bytes() == data and leftovers(dest) == ["m.onnx"]
    assert [(r.range, r.status) for r in store.requests] == [(None, 200), (f"bytes={MB}-", 206), (None, 200)]


def test_a_later_call_resumes_where_the_last_one_stopped(tmp_path, store):
    """Fault: the agent gives up (retries spent) or is restarted mid-download. The next call for the same object
    sends one range request for the rest; the partial file's first half is hashed, not fetched again."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[500_000, 500_000, None]))
    dest = tmp_path / "m.onnx"
    with pytest.raises(FetchError, match=r"download truncated: 1000000 of 2000000 bytes .* \(1 retry\)$"):
        download(uri, dest, len(data), expected_sha256=sha(data), retries=1, backoff_seconds=0.01)
    assert download(uri, dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert [r.range for r in store.requests] == [None, "bytes=500000-", "bytes=1000000-"]


def test_a_store_unavailable_at_the_next_call_keeps_the_partial(tmp_path, store):
    """Fault: the link drops, and when the agent tries again the store answers 503 (or cannot be reached). That call
    fails at once, transiently, and keeps the partial file; the call after it resumes from there."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[MB, None], fail=[None, 503, None]))
    dest = tmp_path / "m.onnx"
    for expected in ("download truncated: 1000000 of 2000000", "download failed: HTTP 503 Service Unavailable from http://"):
        with pytest.raises(FetchError, match=expected):
            download(uri, dest, len(data), expected_sha256=sha(data), retries=0)
        assert partial_paths(dest)[0].stat().st_size == MB
    assert download(uri, dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert [(r.range, r.status) for r in store.requests] == [(None, 200), (f"bytes={MB}-", 503), (f"bytes={MB}-", 206)]


def test_a_partial_for_another_object_is_not_resumed(tmp_path, store):
    """Fault: the partial file beside dest belongs to another artifact (another pinned digest). It is discarded,
    not used as a prefix."""
    data, other = body(2 * MB, seed=1), body(2 * MB, seed=2)
    uri = store.put("m.onnx", Obj([Version(other)], cuts=[MB, None]))
    dest = tmp_path / "m.onnx"
    with pytest.raises(FetchError):
        download(uri, dest, len(other), expected_sha256=sha(other), retries=0)
    store.objects["/m.onnx"] = Obj([Version(data)])
    assert download(uri, dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert store.requests[-1].range is None


def test_retries_are_bounded(tmp_path, store):
    """Fault: every connection drops after 100 KB. After `retries` reconnections the call gives up, saying how far
    it got and how often it tried; the partial file stays for a later call, dest does not exist."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[100_000]))
    dest = tmp_path / "m.onnx"
    with pytest.raises(FetchError, match=r"download truncated: 400000 of 2000000 bytes from .* \(3 retries\)$"):
        download(uri, dest, len(data), retries=3, backoff_seconds=0.01)
    assert len(store.requests) == 4 and not dest.exists()
    assert partial_paths(dest)[0].stat().st_size == 400_000


def test_a_stalled_server_is_a_cut_and_is_resumed(tmp_path, store, monkeypatch, http_path):
    """Fault: the store stops sending for longer than the read timeout after 256 KB, then trickles. The timeout
    counts as a cut; the next request resumes from what arrived."""
    monkeypatch.setattr(dl, "HTTP_TIMEOUT_SECONDS", 0.3)
    data = body(MB)
    uri = store.put("m.onnx", Obj([Version(data)], stall=[1.0, 0.0], trickle=0.005))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert [r.status for r in store.requests] == [200, 206]
    assert int(store.requests[1].range.removeprefix("bytes=").rstrip("-")) >= 256 << 10


def test_the_bandwidth_cap_paces_the_transfer(tmp_path, store):
    """Fault guarded against: an update saturating a metered link. 2 MB at a cap of 1 MB/s takes about 2 s (a
    tenth of a second's burst, then the cap's pace); without the cap it takes a fraction of that."""
    data = body(2 * MB)
    uri = store.put("m.onnx", Obj([Version(data)]))
    start = time.monotonic()
    assert download(uri, tmp_path / "capped", len(data), expected_sha256=sha(data), max_bytes_per_second=MB) == sha(data)
    capped = time.monotonic() - start
    assert 1.8 <= capped <= 2.6, capped
    start = time.monotonic()
    download(uri, tmp_path / "free", len(data))
    assert time.monotonic() - start < capped / 4


def test_the_cap_applies_to_the_local_store(tmp_path):
    """The cap holds for file:// too (a store on a network mount shares the same link)."""
    src = tmp_path / "m.onnx"
    src.write_bytes(body(500_000))
    start = time.monotonic()
    download(src.as_uri(), tmp_path / "out", 500_000, max_bytes_per_second=1_000_000)
    assert 0.35 <= time.monotonic() - start <= 1.0


def test_a_nonsense_cap_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_bytes_per_second must be positive or None, not 0"):
        download((tmp_path / "m").as_uri(), tmp_path / "out", max_bytes_per_second=0)


class Interrupted(BaseException):
    """Stands in for the agent being stopped mid-copy (SIGTERM, power loss after the page cache was written)."""


REAL_COPY_RANGE = dl._copy_range


def interrupt_after(monkeypatch, copies: int) -> list[int]:
    """Stops the local copy at its `copies`+1-th piece; returns the sizes of the pieces copied."""
    done: list[int] = []

    def copy(src, dst, n):
        if len(done) == copies:
            raise Interrupted
        done.append(REAL_COPY_RANGE(src, dst, n))
        return done[-1]

    monkeypatch.setattr(dl, "_copy_range", copy)
    return done


def test_file_uri_resumes_from_the_partial_files_length(tmp_path, monkeypatch):
    """Fault: the agent stops while copying from the local store. The next call copies only the rest (from the
    partial file's length) and the digest covers the whole file."""
    data = body(5 * dl.CHUNK + 123)
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    dest = tmp_path / "out"
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        download(src.as_uri(), dest, len(data), expected_sha256=sha(data))
    assert partial_paths(dest)[0].stat().st_size == 2 * dl.CHUNK and not dest.exists()
    copied = interrupt_after(monkeypatch, 100)
    assert download(src.as_uri(), dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert sum(copied) == len(data) - 2 * dl.CHUNK
    assert dest.read_bytes() == data and leftovers(dest) == ["out"]


def test_file_uri_replaced_in_the_store_starts_again(tmp_path, monkeypatch):
    """Fault: the store's file was replaced (size, mtime or inode differ) between the stop and the restart.
    The partial file is not a prefix of it: the copy starts from byte 0."""
    src = tmp_path / "m.onnx"
    src.write_bytes(body(3 * dl.CHUNK, seed=1))
    dest = tmp_path / "out"
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Interrupted):
        download(src.as_uri(), dest)
    new = body(3 * dl.CHUNK, seed=2)
    tmp = tmp_path / "m.onnx.new"
    tmp.write_bytes(new)
    os.replace(tmp, src)
    copied = interrupt_after(monkeypatch, 100)
    assert download(src.as_uri(), dest) == sha(new)
    assert sum(copied) == len(new) and dest.read_bytes() == new


def test_without_copy_file_range_the_local_copy_reads_and_writes(tmp_path, monkeypatch):
    """Platforms or file systems without copy_file_range fall back to read and write, with the same result."""
    monkeypatch.setattr(dl, "_copy_range", lambda src, dst, n: -1)
    data = body(3 * dl.CHUNK + 5)
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    assert download(src.as_uri(), tmp_path / "out", len(data), expected_sha256=sha(data)) == sha(data)
    assert (tmp_path / "out").read_bytes() == data


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_a_slow_hasher_holds_back_the_writer(tmp_path, monkeypatch, store, scheme):
    """A slow CPU and a fast link: the writer waits while HANDOVER_BYTES (here 1 MiB) are still to be hashed, so
    memory stays bounded whatever the artifact's size (the bound plus one piece), and the digest is of every byte."""
    monkeypatch.setattr(dl, "HANDOVER_BYTES", dl.CHUNK)
    data = body(6 * dl.CHUNK + 7)
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    uri = src.as_uri() if scheme == "file" else store.put("m.onnx", Obj([Version(data)]))
    held: list[int] = []
    real_hand = dl._Verifier.hand

    def slow_hand(self, piece):
        held.append(self._held)
        real_hand(self, piece)
        time.sleep(0.01)

    real_update = dl._Verifier.run

    def slow_start(self):
        time.sleep(0.2)  # the writer is far ahead before the first byte is hashed
        real_update(self)

    monkeypatch.setattr(dl._Verifier, "hand", slow_hand)
    monkeypatch.setattr(dl._Verifier, "run", slow_start)
    assert download(uri, tmp_path / "out", len(data), expected_sha256=sha(data)) == sha(data)
    assert max(held) < 2 * dl.CHUNK


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_cuts_inside_a_small_reused_buffer_resume_and_verify(tmp_path, monkeypatch, store, chunked):
    """Received bytes go through a ring of HANDOVER_BYTES reused for every read (here 100,000 bytes, so it wraps
    about 30 times): cuts that land mid-ring and mid-read lose nothing already received, every resumed range
    starts where the last one ended, and the digest is of every byte. A body of known length is read from the
    socket into the ring, not through read1 (where splice(2) is not used: here it is switched off)."""
    monkeypatch.delattr(os, "splice", raising=False)
    monkeypatch.setattr(dl, "HANDOVER_BYTES", 100_000)
    read1_calls: list[int] = []
    real_read1 = dl.http.client.HTTPResponse.read1

    def counted(self, n=-1):
        read1_calls.append(n)
        return real_read1(self, n)

    monkeypatch.setattr(dl.http.client.HTTPResponse, "read1", counted)
    data = body(3 * MB + 7)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[333_333, 1_000_001, None], chunked=chunked))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert dest.read_bytes() == data and leftovers(dest) == ["m.onnx"]
    assert [r.range for r in store.requests] == [None, "bytes=333333-", "bytes=1333334-"]
    assert (len(read1_calls) <= 2 * len(store.requests)) != chunked  # content-length: only until its buffer is empty


def test_the_store_keeps_only_the_newest_resumable_partial(tmp_path):
    """A restarted agent resumes its download, so clean() keeps the newest partial that records what it is a prefix
    of; older ones, partials without that record, and those older than a week are removed."""
    store = SlotStore(tmp_path, "detector")
    downloads = store.downloads_dir
    downloads.mkdir()
    for name, age in (("old", 100), ("new", 10)):
        partial, state = partial_paths(downloads / name)
        partial.write_bytes(b"x")
        state.write_text("{}")
        os.utime(partial, (time.time() - age, time.time() - age))
    (downloads / "orphan.part").write_bytes(b"x")
    store.clean(keep=set())
    assert sorted(p.name for p in downloads.iterdir()) == ["new.part", "new.part.json"]
    os.utime(downloads / "new.part", (0, 0))
    store.clean(keep=set())
    assert not any(downloads.iterdir())


def test_the_agent_resumes_its_download_after_a_cut_and_a_restart(make_agent, transport, v110, store):
    """Fault: the link drops half-way through an update and the agent is restarted before it retries. The refusal
    is transient (reported, retried later); the partial download survives the refusal's clean-up and the restart;
    the new agent asks only for the rest and serves the model once it verifies against the signed manifest."""
    data = artifact_bytes(v110)
    half = len(data) // 2
    transport.desired_model = dataclasses.replace(v110, uri=store.put("m.onnx", Obj([Version(data)], cuts=[half, 0, None])))
    agent_ = make_agent()
    agent_.sync()
    report = agent_.build_report()
    assert report.status == "failed" and report.error.startswith(f"download truncated: {half} of {len(data)} bytes")
    agent_.close()
    agent_ = make_agent()
    agent_.start()
    agent_.sync()
    assert (agent_.current_version, agent_.status) == ("1.1.0", "ok")
    assert [r.range for r in store.requests] == [None, f"bytes={half}-", f"bytes={half}-"]
    assert not any(agent_.store.downloads_dir.iterdir()), "the finished download left nothing behind"


def test_a_plain_http_body_moves_in_the_kernel_through_cuts(tmp_path, store, http_path):
    """Cuts that land while bytes are in the kernel's pipe lose nothing and duplicate nothing: every resumed range
    starts where the partial file ends, and the digest (hashed from the page cache) is of every byte."""
    data = body(5 * MB + 3)
    uri = store.put("m.onnx", Obj([Version(data)], cuts=[1_234_567, 2_000_001, None]))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert dest.read_bytes() == data and leftovers(dest) == ["m.onnx"]
    assert [r.range for r in store.requests] == [None, "bytes=1234567-", "bytes=3234568-"]


@pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux's")
@pytest.mark.parametrize("side", ["socket->pipe", "pipe->file"])
def test_an_fd_that_refuses_splice_hands_the_body_to_the_buffer_midway(tmp_path, store, monkeypatch, side):
    """A socket or file system without splice support (EINVAL) after 2 MB have moved: what the pipe holds is
    written out by read and write, the rest of the body comes through the buffer, and the file is exact."""
    real, moved = os.splice, [0]

    def refusing(src, dst, count, *args, **kwargs):
        here = splice_side(src)
        if here == side and moved[0] >= 2 * MB:
            raise OSError(errno.EINVAL, "Invalid argument")
        got = real(src, dst, count, *args, **kwargs)
        moved[0] += got if here == "pipe->file" else 0
        return got

    monkeypatch.setattr(os, "splice", refusing)
    data = body(4 * MB + 1)
    uri = store.put("m.onnx", Obj([Version(data)]))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data)) == sha(data)
    assert dest.read_bytes() == data and len(store.requests) == 1
    assert 2 * MB <= moved[0] < len(data), "part of the body went through the kernel, the rest did not"


@pytest.mark.skipif(not hasattr(os, "splice"), reason="os.splice is Linux's")
def test_a_disk_error_halfway_through_a_spliced_piece_leaves_no_uncounted_bytes(tmp_path, store, monkeypatch):
    """Fault: the partial file's disk fails (EIO) after half of a piece has gone from the pipe into the file. The
    piece is not counted, so the file must not keep its first half either: the retry's range starts where the count
    ends, and a file that kept the half would hold it twice. The result is exact."""
    real, state = os.splice, {"pipe_to_file": 0}

    def failing(src, dst, count, *args, **kwargs):
        if splice_side(src) == "socket->pipe":
            return real(src, dst, count, *args, **kwargs)
        state["pipe_to_file"] += 1
        if state["pipe_to_file"] == 5:
            return real(src, dst, max(1, count // 2), *args, **kwargs)
        if state["pipe_to_file"] == 6:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", failing)
    data = body(6 * MB)
    uri = store.put("m.onnx", Obj([Version(data)]))
    dest = tmp_path / "m.onnx"
    assert download(uri, dest, len(data), expected_sha256=sha(data), backoff_seconds=0.01) == sha(data)
    assert dest.read_bytes() == data and len(store.requests) == 2 and store.requests[1].range is not None
