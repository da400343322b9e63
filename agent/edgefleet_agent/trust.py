"""The device's side of The Update Framework: before a new model is installed, refresh the store's TUF metadata with
python-tuf's `ngclient` and require the artifact to be a current signed target that matches the desired state.

What it guarantees, on top of the manifest signature and the rollback order (core.py keeps both):
  * a version a gate rejected is refused even when its old, validly signed desired state is replayed: the publisher
    removed it from the signed targets, so it is "not in the signed targets: revoked or never published";
  * a frozen channel is noticed: the timestamp role expires (a day in production), and a device that cannot get a
    fresher one says "metadata stale since …" in every report and refuses new installs;
  * old metadata (rollback) and metadata from different repository states (mix-and-match) are refused by ngclient,
    and a new root is followed only when the previous root's threshold of keys signed it.

What it never does: stop serving. A device whose metadata is stale, unreachable or refused keeps serving its current
verified model (core.py re-verifies it by its manifest signature at every start) and refuses only new installs.

Fetching: `UrlFetcher` reads file:// (the local store) and http(s):// with urllib (no `requests`), appending a query
string (an Azure SAS) to every URL when given one; `S3Fetcher` reads s3://bucket/prefix with a boto3 client, which on
Greengrass signs with SigV4 using the credentials of the token exchange service (boto3 finds them through
AWS_CONTAINER_CREDENTIALS_FULL_URI, which Greengrass sets for components that depend on aws.greengrass.TokenExchangeService).

The first root: a device is given root.json beside its trusted public key (the local fleet writes it into each
device's state directory as `trusted-root.json`; `--trusted-root` on the command line). It is passed to ngclient as
the bootstrap root on every refresh, and ngclient walks the chain of newer roots from its cache and the store, so a
root rotation signed by the old root's threshold is followed without any change on the device.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Timestamp
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface

from edgefleet_agent.contract.tuf import NOT_A_TARGET, MetadataRefused, PatchIdentity, patch_path, target_mismatches, target_path

__all__ = ["NOT_A_TARGET", "MetadataRefused", "S3Fetcher", "TrustedMetadata", "UrlFetcher", "load_root"]

log = logging.getLogger("edgefleet.agent.trust")

CHUNK = 1 << 16
HTTP_TIMEOUT_SECONDS = 30
DEFAULT_REFRESH_SECONDS = 60.0  # how often a device whose timestamp expired tries again for a fresh one


def _not_found(url: str, code: int = 404) -> tuf_errors.DownloadHTTPError:
    return tuf_errors.DownloadHTTPError(f"{_redact(url)}: not found", code)


def _redact(url: str) -> str:
    head, sep, _ = url.partition("?")
    return f"{head}?<redacted>" if sep else url


class UrlFetcher(FetcherInterface):
    """file:// and http(s):// with the standard library. `query` (an Azure SAS, without the '?') goes on every URL and
    never into a message."""

    def __init__(self, query: str | None = None, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        self.query = query.lstrip("?") if query else None
        self.timeout = timeout

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise tuf_errors.DownloadError(f"{url} names host {parts.netloc!r}; file:// URLs must be local")
            path = Path(urllib.request.url2pathname(unquote(parts.path)))
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise _not_found(url) from None
            except OSError as exc:
                raise tuf_errors.DownloadError(f"cannot read {url}: {exc.strerror}") from None
            return iter([data])
        if parts.scheme in ("http", "https"):
            full = f"{url}{'&' if '?' in url else '?'}{self.query}" if self.query else url
            try:
                response = urllib.request.urlopen(full, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                raise tuf_errors.DownloadHTTPError(f"HTTP {exc.code} from {_redact(full)}", exc.code) from None
            except (urllib.error.URLError, OSError) as exc:
                raise tuf_errors.DownloadError(f"cannot reach {_redact(full)}: {getattr(exc, 'reason', exc)}") from None
            return _chunks(response)
        raise tuf_errors.DownloadError(f"unsupported metadata URL scheme {parts.scheme!r} (file, http, https or s3)")


def _chunks(response: Any) -> Iterator[bytes]:
    with response:
        while True:
            chunk = response.read(CHUNK)
            if not chunk:
                return
            yield chunk


class S3Fetcher(FetcherInterface):
    """s3://bucket/key through a boto3 S3 client (SigV4). On Greengrass the client's credentials come from the token
    exchange service; the metadata objects need only s3:GetObject on the store's tuf/metadata/ prefix. The client is
    built on first use, so importing this module needs no boto3."""

    def __init__(self, client: Any = None, region: str | None = None) -> None:
        self._client = client
        self.region = region

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # the [greengrass] extra

            self._client = boto3.client("s3", region_name=self.region)
        return self._client

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise tuf_errors.DownloadError(f"S3Fetcher reads s3:// URLs, not {parts.scheme}://")
        try:
            body = self.client.get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))["Body"]
        except Exception as exc:  # botocore's ClientError, without importing botocore here
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise _not_found(url) from None
            if code in ("AccessDenied", "403"):  # S3 answers 403 for a missing key to a reader without ListBucket
                raise _not_found(url, 403) from None
            raise tuf_errors.DownloadError(f"cannot read {url}: {exc}") from None
        return iter(lambda: body.read(CHUNK), b"")


def fetcher_for(metadata_url: str, query: str | None = None) -> FetcherInterface:
    return S3Fetcher() if urlsplit(metadata_url).scheme == "s3" else UrlFetcher(query)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def classify(exc: Exception) -> str:
    """A refusal's sentence for a report, from what ngclient raised."""
    text = str(exc)
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        if "must be >=" in text or "must be >" in text:
            return f"metadata rollback refused: {text}"
        return f"metadata mix-and-match refused (files from different repository states): {text}"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return f"metadata signature refused (not signed by the threshold of trusted keys): {text}"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return f"metadata refused (does not match what the snapshot names): {text}"
    if isinstance(exc, tuf_errors.DownloadError):
        return f"metadata unreachable: {text}"
    return f"metadata refused: {type(exc).__name__}: {text}"


@dataclass(frozen=True)
class _Fresh:
    at: float  # when this device last completed a refresh
    expires: datetime  # the held timestamp's expiry


class TrustedMetadata:
    """One device's (and one model's) TUF client: `check` before every install, `poll` on every sync."""

    def __init__(
        self,
        root: bytes,
        metadata_url: str,
        cache_dir: Path,
        fetcher: FetcherInterface | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        Metadata[Root].from_bytes(root)  # a file that is not root metadata fails at start, not at the first install
        self.root = root
        self.metadata_url = metadata_url.rstrip("/") + "/"
        self.cache_dir = Path(cache_dir)
        self.fetcher = fetcher if fetcher is not None else fetcher_for(metadata_url)
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._fresh: _Fresh | None = None
        self._stale: str | None = None
        self._last_attempt = float("-inf")
        self._checked: Updater | None = None  # the refresh the last check() passed on: patches are looked up in it

    # -- what a report says ---------------------------------------------------------------------------------------
    @property
    def notice(self) -> str | None:
        """ "metadata stale since …" while the device holds no unexpired timestamp (or why the last refresh failed)."""
        return self._stale

    # -- refreshing -------------------------------------------------------------------------------------------------
    def refresh(self) -> Updater:
        """A full ngclient refresh (root chain, timestamp, snapshot, targets). Raises MetadataRefused."""
        with self._lock:
            self._last_attempt = self.clock()
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            try:
                updater = Updater(
                    metadata_dir=str(self.cache_dir),
                    metadata_base_url=self.metadata_url,
                    fetcher=self.fetcher,
                    config=UpdaterConfig(max_root_rotations=64),
                    bootstrap=self.root,
                )
                updater.refresh()
            except tuf_errors.ExpiredMetadataError as exc:
                self._stale = self._stale_reason(exc)
                raise MetadataRefused(self._stale, transient=True) from None
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
                reason = classify(exc)
                held = self._held_expiry()
                if held is not None and held <= datetime.now(timezone.utc):
                    self._stale = f"metadata stale since {_iso(held)}: timestamp expired at {_iso(held)}; {reason}"
                    raise MetadataRefused(self._stale, transient=True) from None
                self._stale = None if isinstance(exc, tuf_errors.DownloadError) else reason
                raise MetadataRefused(reason, transient=True) from None
            except OSError as exc:
                raise MetadataRefused(f"cannot write the metadata cache {self.cache_dir}: {exc.strerror or exc}", transient=True) from None
            expires = self._held_expiry()
            self._fresh = _Fresh(self.clock(), expires) if expires is not None else None
            self._stale = None
            return updater

    def _held_expiry(self) -> datetime | None:
        """The expiry of the timestamp this device holds (ngclient's cache): what it last verified."""
        try:
            return Metadata[Timestamp].from_bytes((self.cache_dir / "timestamp.json").read_bytes()).signed.expires
        except (OSError, ValueError, tuf_errors.RepositoryError) as exc:
            log.debug("no held timestamp in %s: %s", self.cache_dir, exc)
            return None

    def _stale_reason(self, exc: tuf_errors.ExpiredMetadataError) -> str:
        text = str(exc)
        role = next((r for r in ("timestamp", "snapshot", "targets", "root") if r in text), "metadata")
        held = self._held_expiry() if role == "timestamp" else None
        if role == "timestamp" and held is not None:
            return f"metadata stale since {_iso(held)}: timestamp expired at {_iso(held)}, and the store offers none fresher"
        if self._fresh is not None and role == "timestamp":
            when = _iso(self._fresh.expires)
            return f"metadata stale since {when}: timestamp expired at {when}, and the store offers none fresher"
        return f"metadata stale since {_iso(datetime.now(timezone.utc))}: {role} metadata expired ({text})"

    def poll(self) -> None:
        """Called on every sync: when the held timestamp has expired, tries for a fresh one at most every
        `refresh_seconds`, so a frozen channel turns into "metadata stale since …" without costing a refresh per sync."""
        now = self.clock()
        if now - self._last_attempt < self.refresh_seconds:
            return
        fresh = self._fresh
        if fresh is None:
            held = self._held_expiry()
            if held is None:
                return  # nothing verified yet, so nothing to be stale about: the first install refreshes
            fresh = self._fresh = _Fresh(now, held)
        if fresh.expires > datetime.now(timezone.utc) and self._stale is None:
            return
        try:
            self.refresh()
        except MetadataRefused as exc:
            log.warning("update metadata: %s", exc.reason)

    # -- the check before an install --------------------------------------------------------------------------------
    def check(self, model: str, version: str, sha256: str, size: int, manifest_bytes: bytes) -> None:
        """Raises MetadataRefused unless fresh metadata lists exactly this artifact and manifest as a target."""
        updater = self.refresh()
        path = target_path(model, version, sha256)
        try:
            info = updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise MetadataRefused(classify(exc), transient=True) from None
        if info is None:
            raise MetadataRefused(f"{model} {version} (sha256 {sha256[:12]}…) is {NOT_A_TARGET}", transient=False)
        problems = target_mismatches(
            info.length,
            info.hashes,
            info.custom,
            model=model,
            version=version,
            sha256=sha256,
            size=size,
            manifest_bytes=manifest_bytes,
        )
        if problems:
            raise MetadataRefused(f"the signed target {path} does not match the desired state: " + "; ".join(problems), transient=False)
        self._checked = updater

    def patch(self, model: str, from_sha256: str, to_sha256: str, method: str) -> PatchIdentity | None:
        """The signed patch from one artifact to another, in the metadata the last `check` verified (docs/deltas.md);
        None when there is none, or it does not describe exactly that pair."""
        updater = self._checked
        if updater is None:
            return None
        try:
            info = updater.get_targetinfo(patch_path(model, from_sha256, to_sha256, method))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            log.info("no signed patch: %s", classify(exc))
            return None
        if info is None:
            return None
        patch = PatchIdentity.from_target(info.length, info.hashes, info.custom)
        if patch is None or (patch.model, patch.method, patch.from_sha256, patch.to_sha256) != (model, method, from_sha256, to_sha256):
            return None
        return patch


def load_root(path: Path) -> bytes:
    """A device's first root.json, checked to be root metadata."""
    data = Path(path).read_bytes()
    Metadata[Root].from_bytes(data)
    return data
