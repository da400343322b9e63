"""One TUF client for all the simulated devices of one model.

Every simulated device is provisioned with the same root and reads the same store, so a full refresh (root chain,
timestamp, snapshot, targets, each signature checked) made for one of them is the refresh each would make: the
simulator's one thread would otherwise repeat it for every install, and at 10,000 devices that alone took most of a
ring's deadline (a device refreshes before every install; each refresh is four signature checks and four files written).
Devices that install within `reuse_seconds` of a successful refresh check their target against it, as devices that
refreshed at the same moment would; a failed refresh is never reused. The agent processes keep their own client each.
"""

from __future__ import annotations

from tuf.ngclient import Updater

from edgefleet_agent.trust import TrustedMetadata

REUSE_SECONDS = 1.0


class SharedTrust(TrustedMetadata):
    """TrustedMetadata whose successful refresh serves every check within `reuse_seconds` of it."""

    reuse_seconds = REUSE_SECONDS
    _shared: tuple[float, Updater] | None = None  # when the last successful refresh was made, and its result

    def refresh(self) -> Updater:
        held = self._shared
        if held is not None and 0 <= self.clock() - held[0] < self.reuse_seconds:
            return held[1]
        updater = super().refresh()
        self._shared = (self.clock(), updater)
        return updater
