"""Downloading an artifact: streamed in constant memory, hashed as it arrives, checked against the size the
signed manifest pins. Whatever the platform, the agent downloads with this code."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20
HTTP_TIMEOUT_SECONDS = 30


class FetchError(Exception):
    """A download that did not deliver the whole artifact. May succeed later, unlike a bad signature."""


def fetch(uri: str, dest: Path) -> None:
    """Streams `uri` (file:// or http(s)://) to `dest`; raises FetchError on any short or failed read."""
    download(uri, Path(dest))


def download(uri: str, dest: Path, expected_size: int | None = None) -> str:
    """Streams `uri` to `dest` in constant memory and returns the sha256 of what was written.

    With `expected_size`, stops at the first byte past it and reports a short file as truncated, so a
    partial upload in the store or a dropped connection never reaches verification as "valid but short".
    On failure `dest` is removed.
    """
    dest = Path(dest)
    try:
        return _stream(uri, dest, expected_size)
    except (FetchError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        # a query string can be a credential (an Azure SAS): keep it out of logs and reports
        shown = redact_uri(uri)
        if isinstance(exc, FetchError) and shown == uri:
            raise
        message = str(exc).replace(uri, shown) if isinstance(exc, FetchError) else f"download failed: invalid URI {shown}"
        raise FetchError(message) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def redact_uri(uri: str) -> str:
    """`uri` with its query string (e.g. a SAS token) replaced, for messages that are logged or reported."""
    head, sep, _ = uri.partition("?")
    return f"{head}?<redacted>" if sep else uri


def _stream(uri: str, dest: Path, expected_size: int | None) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"download failed: {uri} names host {parts.netloc!r}; file:// URIs must be local")
        path = Path(urllib.request.url2pathname(unquote(parts.path)))
        try:
            source: BinaryIO = open(path, "rb")
        except OSError as exc:
            raise FetchError(f"download failed: cannot open {uri}: {exc.strerror}") from None
        declared = None
    elif parts.scheme in ("http", "https"):
        try:
            response: http.client.HTTPResponse = urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_SECONDS)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"download failed: HTTP {exc.code} {exc.reason} from {uri}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"download failed: cannot reach {uri}: {getattr(exc, 'reason', exc)}") from None
        length = response.headers.get("Content-Length")
        declared = int(length) if length and length.isdigit() else None
        source = response
    else:
        raise FetchError(f"download failed: unsupported URI scheme {parts.scheme!r} in {uri} (expected file, http or https)")

    want = expected_size if expected_size is not None else declared
    digest = hashlib.sha256()
    total = 0
    with source, open(dest, "wb") as out:
        while True:
            try:
                chunk = source.read(CHUNK)
            except http.client.IncompleteRead as exc:
                total += len(exc.partial)
                raise FetchError(f"download truncated: {total} of {want or '?'} bytes from {uri} (connection closed early)") from None
            except OSError as exc:
                raise FetchError(f"download failed after {total} bytes from {uri}: {exc}") from None
            if not chunk:
                break
            total += len(chunk)
            if expected_size is not None and total > expected_size:
                raise FetchError(f"download too large: more than the {expected_size} bytes the signed manifest pins, from {uri}")
            digest.update(chunk)
            out.write(chunk)
    if want is not None and total < want:
        raise FetchError(f"download truncated: {total} of {want} bytes from {uri}")
    return digest.hexdigest()
