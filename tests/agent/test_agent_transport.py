"""Downloads: whole files arrive, short ones are named as such, and nothing partial is left behind."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from agent_testkit import MODEL

from edgefleet_agent.download import FetchError, download, fetch
from edgefleet_agent.transports.local import LocalHubTransport


def test_fetch_file_uri(tmp_path):
    src = tmp_path / "model with space.onnx"
    src.write_bytes(b"x" * 3_000_000)
    dest = tmp_path / "out"
    fetch(src.as_uri(), dest)
    assert dest.read_bytes() == src.read_bytes()


def test_download_returns_the_digest_of_what_it_wrote(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"abc" * 1000)
    assert download(src.as_uri(), tmp_path / "out", expected_size=3000) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_short_file_is_truncated(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x" * 1200)
    dest = tmp_path / "out"
    with pytest.raises(FetchError) as err:
        download(src.as_uri(), dest, expected_size=2364)
    assert str(err.value) == f"download truncated: 1200 of 2364 bytes from {src.as_uri()}"
    assert not dest.exists()


def test_oversized_file_is_cut_off(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"x" * 5000)
    with pytest.raises(FetchError, match="download too large: more than the 2364 bytes the signed manifest pins"):
        download(src.as_uri(), tmp_path / "out", expected_size=2364)


def test_missing_file(tmp_path):
    with pytest.raises(FetchError, match="download failed: cannot open .*: No such file or directory"):
        fetch((tmp_path / "nope.onnx").as_uri(), tmp_path / "out")


@pytest.mark.parametrize(
    "uri, message",
    [
        ("ftp://example.com/m.onnx", "unsupported URI scheme 'ftp'"),
        ("file://otherhost/m.onnx", "file:// URIs must be local"),
    ],
)
def test_unsupported_uris(tmp_path, uri, message):
    with pytest.raises(FetchError, match=message):
        fetch(uri, tmp_path / "out")


def test_http_download(tmp_path, http_store):
    body = bytes(range(256)) * 10_000
    dest = tmp_path / "out"
    fetch(http_store.url("big", body), dest)
    assert dest.read_bytes() == body


def test_http_connection_closed_early(tmp_path, http_store):
    url = http_store.url("short", b"x" * 1000, claim=2364)
    with pytest.raises(FetchError, match=r"^download truncated: 1000 of 2364 bytes from http://"):
        fetch(url, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_http_error_status(tmp_path, http_store):
    with pytest.raises(FetchError, match=r"download failed: HTTP 404 Not Found from http://"):
        fetch(http_store.url("exists", b"").rsplit("/", 1)[0] + "/missing", tmp_path / "out")


def test_http_unreachable(tmp_path):
    with pytest.raises(FetchError, match="download failed: cannot reach http://127.0.0.1:9/"):
        fetch("http://127.0.0.1:9/m.onnx", tmp_path / "out")


def test_local_hub_transport_refuses_a_missing_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no local hub database here"):
        LocalHubTransport(tmp_path / "hub.db")
    assert not (tmp_path / "hub.db").exists()


def test_without_sqlite3_the_local_transport_exits_2_and_says_why(tmp_path, keys):
    """A Python built without sqlite3 has no local transport: a reason and exit 2, not a traceback."""
    hub = tmp_path / "hub.db"
    hub.touch()
    code = "import sys\nsys.modules['sqlite3'] = None\nfrom edgefleet_agent.__main__ import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--hub",
            str(hub),
            "--device-id",
            "cam-1",
            "--model",
            MODEL,
            "--public-key",
            str(keys.pem_path),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("edgefleet-agent: the local transport is not part of this installation"), proc.stderr
