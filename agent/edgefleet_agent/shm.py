"""Triton's system shared-memory extension, the device side: regions an application registers (a POSIX shared-memory
object under /dev/shm, an offset and a size), mapped once, from which inference requests read their inputs and into
which they write their outputs without the tensor crossing the socket (protocol.py reads and writes the bytes).

Answers as Triton's do (docs/protocol/extension_shared_memory.md, src/shared_memory_manager.cc): status is a JSON
list of {"name", "key", "offset", "byte_size"}; an unknown region is 404; registering a name twice, a key that does
not open, or a range past the object's end is 400; unregistering a name that is not registered succeeds. Two
differences, both refusals Triton would not make: a key must name an object directly under /dev/shm (one leading `/`
as shm_open takes it, no other `/`, no `..`), and the regions are bounded in count and in mapped bytes, so an
application cannot make the agent map without limit (a region unregistered under a request in flight counts until that
request ends and it is unmapped). An offset need not be page-aligned.

Only processes that share the agent's IPC namespace (its /dev/shm) can use this: applications on the device itself,
or containers started with the agent's IPC namespace (IoT Edge: HostConfig IpcMode, see docs/agent.md).
"""

from __future__ import annotations

import logging
import mmap
import os
import stat
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet_agent.protocol import ProtocolError, SharedMemoryRef, bad_request

log = logging.getLogger("edgefleet.agent.shm")

SHM_ROOT = Path("/dev/shm")
DEFAULT_MAX_REGIONS = 16
DEFAULT_MAX_MAPPED_BYTES = 256 << 20


@dataclass(frozen=True)
class _Region:
    name: str
    key: str
    offset: int
    byte_size: int
    map: mmap.mmap
    start: int  # where the region begins in `map`, which starts at a page boundary

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


def _file_name(key: object) -> str:
    """The object's name under /dev/shm: shm_open's key without its leading `/`, refused if it could name anything else."""
    if not isinstance(key, str):
        raise bad_request(f"key must be a string (the shared-memory object's name, as shm_open takes it), got {key!r}")
    name = key[1:] if key.startswith("/") else key
    if not name or "/" in name or ".." in name or "\0" in name or name == ".":
        raise bad_request(
            f"key {key!r} must name a shared-memory object directly under /dev/shm, such as '/input0' (no other '/', no '..')"
        )
    return name


def _count(name: str, what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"failed to register shared memory region {name!r}: {what} must be a non-negative integer, got {value!r}")
    return value


class SharedMemoryRegions:
    """The registered system shared-memory regions of one endpoint, bounded by `max_regions` and `max_mapped_bytes`."""

    def __init__(
        self, max_regions: int = DEFAULT_MAX_REGIONS, max_mapped_bytes: int = DEFAULT_MAX_MAPPED_BYTES, root: Path = SHM_ROOT
    ) -> None:
        self.max_regions = max_regions
        self.max_mapped_bytes = max_mapped_bytes
        self.root = root
        self._lock = threading.Lock()
        self._regions: dict[str, _Region] = {}  # replaced, never mutated: requests read it without the lock
        # Unregistered while a request still reads or writes them: unmapped (and gone from here) when the last view is
        # released, and counted against max_mapped_bytes until then, or held requests would let an application map
        # without limit by unregistering and registering again.
        self._unmapping: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()

    def register(self, name: str, body: object) -> None:
        """$system_shared_memory_register_request for region `name`. ProtocolError (400) names what is wrong."""
        if not isinstance(body, dict):
            raise bad_request('register takes {"key": "/name", "offset": N, "byte_size": N}')
        file_name = _file_name(body.get("key"))
        offset, byte_size = _count(name, "offset", body.get("offset", 0)), _count(name, "byte_size", body.get("byte_size"))
        if byte_size == 0:
            raise bad_request(f"failed to register shared memory region {name!r}: byte_size must be positive")
        with self._lock:
            if name in self._regions:
                raise bad_request(f"shared memory region {name!r} already in manager: unregister it first")
            if len(self._regions) >= self.max_regions:
                raise bad_request(
                    f"failed to register shared memory region {name!r}: {len(self._regions)} regions are registered, "
                    f"this endpoint's limit (unregister one, or raise --shm-max-regions)"
                )
            unmapping = sum(len(m) for m in self._unmapping)
            mapped = sum(len(r.map) for r in self._regions.values()) + unmapping
            start = offset % mmap.ALLOCATIONGRANULARITY
            if mapped + start + byte_size > self.max_mapped_bytes:
                held = f", {unmapping} of them still mapped for requests in flight on unregistered regions" if unmapping else ""
                raise bad_request(
                    f"failed to register shared memory region {name!r}: {byte_size} more bytes would map "
                    f"{mapped + start + byte_size} bytes, over this endpoint's limit of {self.max_mapped_bytes}{held} "
                    "(unregister regions, or raise --shm-max-mib)"
                )
            region = _Region(name, body["key"], offset, byte_size, self._map(name, file_name, offset - start, start + byte_size), start)
            self._regions = {**self._regions, name: region}

    def _map(self, name: str, file_name: str, at: int, length: int) -> mmap.mmap:
        try:
            fd = os.open(self.root / file_name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise bad_request(
                f"Unable to open shared memory region: '/{file_name}' ({exc.strerror}): create it before registering it"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise bad_request(f"failed to register shared memory region {name!r}: '/{file_name}' is not a shared-memory object")
            if at + length > info.st_size:
                raise bad_request(
                    f"failed to register shared memory region {name!r}: offset + byte_size is {at + length} bytes, "
                    f"past the end of '/{file_name}' ({info.st_size} bytes)"
                )
            return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=at)
        except OSError as exc:
            raise bad_request(f"failed to register shared memory region {name!r}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    def unregister(self, name: str | None = None) -> None:
        """Unmaps region `name` (every region when None); a name not registered is no error, as in Triton."""
        with self._lock:
            gone = [r for n, r in self._regions.items() if name is None or n == name]
            self._regions = {n: r for n, r in self._regions.items() if r not in gone}
            for region in gone:
                try:
                    region.map.close()
                except BufferError:  # a request in flight still reads or writes it: unmapped when its views are gone
                    self._unmapping.add(region.map)
                    log.debug("shared memory region %r is unmapped when its in-flight requests finish", region.name)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """$system_shared_memory_status_response; ProtocolError 404 for a name not registered."""
        regions = self._regions
        if name is None:
            return [r.status() for r in regions.values()]
        region = regions.get(name)
        if region is None:
            raise ProtocolError(404, f"Unable to find system shared memory region: {name!r}")
        return [region.status()]

    def view(self, ref: SharedMemoryRef, where: str) -> memoryview:
        """The bytes `ref` names, without a copy. ProtocolError 404 for an unregistered region, 400 for a range past it."""
        region = self._regions.get(ref.region)
        if region is None:
            raise ProtocolError(404, f"{where}: Unable to find shared memory region: {ref.region!r}; register it first")
        if ref.offset + ref.byte_size > region.byte_size:
            raise bad_request(
                f"{where}: Invalid offset + byte size for shared memory region: {ref.region!r} "
                f"({ref.offset} + {ref.byte_size} bytes, the region has {region.byte_size})"
            )
        try:
            whole = memoryview(region.map)
        except ValueError:  # unregistered (and unmapped) since this request looked it up
            raise ProtocolError(404, f"{where}: Unable to find shared memory region: {ref.region!r}; register it first") from None
        begin = region.start + ref.offset
        return whole[begin : begin + ref.byte_size]
