"""One TUF client for all the simulated devices of one model.

Every simulated device is provisioned with the same root and reads the same store, so a full refresh (root chain,
timestamp, snapshot, targets, each signature checked) made for one of them is the refresh each would make: the
simulator's one thread would otherwise repeat it for every install, and at 10,000 devices that alone took most of a
ring's deadline (a device refreshes before every install; each refresh is four signature checks and four files written).
Devices that install within `reuse_seconds` of a successful refresh, while the store's timestamp metadata is byte for
byte the one that refresh verified, check their target against it, as devices that refreshed at that moment would: a
new timestamp (a version published or revoked) always means a full refresh, and a failed refresh is never reused. The
agent processes keep their own client each.
"""

from __future__ import annotations

from tuf.ngclient import Updater

from edgefleet_agent.trust import TrustedMetadata

REUSE_SECONDS = 1.0
TIMESTAMP_MAX_BYTES = 16384  # ngclient's own default bound for timestamp metadata


class SharedTrust(TrustedMetadata):
    """TrustedMetadata whose successful refresh serves every check within `reuse_seconds` of it."""

    reuse_seconds = REUSE_SECONDS
    _shared: tuple[float, bytes, Updater] | None = None  # the last successful refresh: when, the timestamp it verified, its result

    def refresh(self) -> Updater:
        held = self._shared
        stamp = self._timestamp()
        if held is not None and stamp is not None and stamp == held[1] and 0 <= self.clock() - held[0] < self.reuse_seconds:
            return held[2]
        updater = super().refresh()
        self._shared = (self.clock(), stamp, updater) if stamp is not None else None
        return updater

    def _timestamp(self) -> bytes | None:
        """The store's timestamp metadata as it is now (None when it cannot be read: then nothing is reused)."""
        try:
            return self.fetcher.download_bytes(self.metadata_url + "timestamp.json", TIMESTAMP_MAX_BYTES)
        except Exception:  # any failure only means a full refresh, which reports it properly
            return None
