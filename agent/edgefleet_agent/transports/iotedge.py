"""The agent as an Azure IoT Edge module: desired state from the module twin, reports to its reported properties.

Contract (docs/azure.md, "The agent module twin"; edgefleet_agent/contract/iotedge.py is the source of truth):

- desired: `properties.desired` = {"schemaVersion": "edgefleet-agent/1", "trust": {"keyId", "publicKeyPem"},
  "store": {"sasToken"}, "models": {<key>: {model, version, sha256, size, uri, manifest[, manifest01 …],
  manifestChunks, signature[, signature01 …], signatureChunks, rollout, ring[, rollbackOrder, rollbackSignature,
  variants, maintenanceWindows, maxDownloadBytesPerSecond]}}}, where maintenanceWindows (the ring's group's windows,
  one JSON string) holds a forward swap until a window is open (DeviceAgent; a rollback never waits),
  <key> = `contract.iotedge.model_key(model)`. IoT Hub holds at most 4 KB in a twin string, so the
  manifest and signature come in `<name>Chunks` pieces named the way IoT Edge splits createOptions; the agent joins
  exactly that many (`desired_from_agent`) before verifying, which reproduces the signed bytes. The agent
  downloads `uri + "?" + store.sasToken`; the token is never logged nor reported. `maxDownloadBytesPerSecond` (the
  ring's download cap) becomes the DesiredModel's `max_download_bytes_per_second`, which the agent's downloader keeps
  to; a value that is not a positive integer is ignored (logged), as on the local platform.
- A ring's layer sets a model entry whole, and a notification of the whole desired properties does not null the keys
  the new entry dropped (a removed cap, a longer predecessor's chunks, a rollback order): so a patch whose entry
  carries every field a layer writes (WHOLE_ENTRY) replaces the cached entry instead of merging into it. A partial
  patch of an entry (a service-side update of one property; null removes it) merges as IoT Hub merges it.
- reported: `properties.reported.models.<key>` = exactly REPORTED_FIELDS, with `ring` and `rollout` echoed from
  the desired entry (the ring's custom metrics count by them), and `quality`, the window's requests bounded; what the
  twin held from the previous window (the last entry sent, or read at refresh) is nulled where this one lacks it. A value the agent does not have is sent as
  null, which IoT Hub applies as "remove this property". When a model leaves the desired properties, its
  reported entry is removed (also at start, for entries a previous run left behind).
- The platform deploys one agent module per device group with no command line (components/azure/manifest.py
  `AgentModule`), and several rollouts may each set a model in its twin. So `EdgeSupervisor` runs one
  `DeviceAgent` per model found under `models` (or only `--model`), each in `<state-dir>/<model>/`.

The SDK (azure-iot-device) is imported only by `IoTEdgeTransport.from_edge_environment`; tests inject any
object with the same methods and handler properties as `IoTHubModuleClient`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, cast
from urllib.parse import urlsplit

from edgefleet_agent import __version__
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.iotedge import AGENT_FORMAT, CAP_KEY, desired_from_agent, model_key, reported_entry
from edgefleet_agent.contract.signing import key_id_of, load_public_key
from edgefleet_agent.contract.state import DesiredModel, DeviceReport

if TYPE_CHECKING:
    from edgefleet_agent.core import DeviceAgent
    from edgefleet_agent.endpoint import ModelRegistry

log = logging.getLogger("edgefleet.agent.iotedge")

RESYNC_SECONDS = 900.0  # a full get_twin at least this often, whatever patches said
RETRY_MAX_SECONDS = 60.0  # longest wait between twin reads while the hub cannot be reached
LOOPBACK = ("127.0.0.1", "::1", "localhost")  # plain http allowed only to a store on the device itself (tests)
WHOLE_ENTRY = ("model", "version", "sha256", "size", "uri")  # a model entry carrying all of these is one a layer set whole


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Applies a twin patch the way IoT Hub does (JSON merge patch): null removes, objects merge, values replace."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            node = target.get(key)
            target[key] = merge_patch(node if isinstance(node, dict) else {}, value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def replace_whole_entries(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Drops from `target` each model entry that `patch` sets whole (every WHOLE_ENTRY field present), so that merging
    `patch` afterwards leaves exactly the new entry: keys the old entry had and the new one lacks do not linger."""
    models, held = patch.get("models"), target.get("models")
    if not isinstance(models, dict) or not isinstance(held, dict):
        return
    for key, entry in models.items():
        if isinstance(entry, dict) and all(entry.get(k) is not None for k in WHOLE_ENTRY):
            held.pop(key, None)


class ModuleClient(Protocol):
    """What the transport uses of azure.iot.device's IoTHubModuleClient (sync, v2), which ships no types."""

    on_connection_state_change: Callable[[], None] | None
    on_twin_desired_properties_patch_received: Callable[[dict[str, Any]], None] | None

    def get_twin(self) -> dict[str, Any]: ...

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any], /) -> None: ...

    def shutdown(self) -> None: ...


class IoTEdgeTransport:
    """Transport over an IoT Edge module twin. Thread-safe: the SDK calls the patch handler on its own thread,
    each model's agent reads `desired` from its sync loop and calls `report` from its reporting thread."""

    def __init__(
        self, client: ModuleClient, *, resync_seconds: float = RESYNC_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.client = client
        self.resync_seconds = resync_seconds
        self._clock = clock
        self._lock = threading.Lock()  # the desired-properties cache
        self._report_lock = threading.Lock()  # one reported patch at a time, and the set of reported keys
        self._desired: dict[str, Any] = {}
        self._version: int | None = None
        self._stale = True
        self._synced_at: float | None = None
        self._reported: set[str] = set()
        self._sent: dict[str, dict[str, Any]] = {}  # the last reported entry per model key, as the twin holds it
        self._failures = 0
        self._retry_at: float | None = None
        self._ignored_caps: dict[str, object] = {}  # model key -> the bad cap last logged, so it is logged once

    @classmethod
    def from_edge_environment(
        cls, *, resync_seconds: float = RESYNC_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> "IoTEdgeTransport":
        """The module client IoT Edge provides to this container (raises ImportError or OSError outside one)."""
        try:
            from azure.iot.device import IoTHubModuleClient
        except ImportError as exc:
            raise ImportError(f"azure-iot-device is not installed ({exc}); install edgefleet-agent[iotedge]") from None
        # The SDK types its handler setters for its async client too; this transport sets plain callables, as its docs show.
        client = cast(ModuleClient, IoTHubModuleClient.create_from_edge_environment())
        return cls(client, resync_seconds=resync_seconds, clock=clock)

    # -- the twin -------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Subscribes to patches, then reads the whole twin. Handlers go first so that no patch between the
        read and the subscription is lost; patches older than the twin read are dropped by `$version`."""
        self.client.on_connection_state_change = self._on_connection_state_change
        self.client.on_twin_desired_properties_patch_received = self._on_desired_patch
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> bool:
        """Reads the whole twin if a patch may have been missed (reconnect, `$version` gap) or RESYNC_SECONDS passed."""
        with self._lock:
            now = self._clock()
            due = force or self._stale or self._synced_at is None or now - self._synced_at >= self.resync_seconds
            if not due or (not force and self._retry_at is not None and now < self._retry_at):
                return False
        try:
            twin = self.client.get_twin() or {}
        except Exception:
            with self._lock:  # offline: back off instead of asking (and logging) every sync period
                self._failures += 1
                self._retry_at = self._clock() + min(RETRY_MAX_SECONDS, 2.0 ** min(self._failures, 6))
            raise
        desired: dict[str, Any] = d if isinstance(d := twin.get("desired"), dict) else {}
        reported: dict[str, Any] = r if isinstance(r := twin.get("reported"), dict) else {}
        version = desired.get("$version")
        with self._lock:
            newer_patch = isinstance(self._version, int) and isinstance(version, int) and self._version > version
            if newer_patch and self._synced_at is not None:
                self._stale = True  # a newer patch arrived while reading: read again next time
            else:  # (the first read always wins: a patch alone is no whole document)
                self._desired = copy.deepcopy(desired)
                self._version = version if isinstance(version, int) else None
                self._stale = newer_patch
                self._synced_at = self._clock()
            self._failures, self._retry_at = 0, None
            wanted = set(self._models_locked())
        self._forget_reports(reported, wanted)
        return True

    def _on_desired_patch(self, patch: object) -> None:
        try:
            if not isinstance(patch, dict):
                return
            version = patch.get("$version")
            with self._lock:
                if isinstance(version, int) and isinstance(self._version, int):
                    if version <= self._version:
                        return  # already part of what we hold
                    if version > self._version + 1:
                        self._stale = True  # one was missed: applied anyway, and the next refresh reads the twin
                replace_whole_entries(self._desired, patch)
                merge_patch(self._desired, patch)
                if isinstance(version, int):
                    self._version = version
            log.info("module twin: desired properties patch $version %s applied", version)
        except Exception:  # noqa: BLE001 - never let a bad patch kill the SDK's handler thread
            log.exception("module twin: could not apply a desired properties patch; the next refresh reads the twin")
            with self._lock:
                self._stale = True

    def _on_connection_state_change(self) -> None:
        with self._lock:
            self._stale = True  # patches sent while disconnected are not replayed

    def _models_locked(self) -> dict[str, dict[str, Any]]:
        models = self._desired.get("models")
        return {k: v for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else {}

    def models(self) -> dict[str, dict[str, Any]]:
        """Desired model entries by twin key (copies)."""
        with self._lock:
            return copy.deepcopy(self._models_locked())

    def trust(self) -> object:
        with self._lock:
            return copy.deepcopy(self._desired.get("trust"))

    def _sas(self) -> str | None:
        store = self._desired.get("store")
        token = store.get("sasToken") if isinstance(store, dict) else None
        return token.lstrip("?") if isinstance(token, str) and token.strip() else None

    # -- Transport ----------------------------------------------------------------------------------------------
    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        key = model_key(model)
        with self._lock:
            schema = self._desired.get("schemaVersion")
            entry = copy.deepcopy(self._models_locked().get(key))
            sas = self._sas()
        if entry is None:
            return None
        if schema is not None and schema != AGENT_FORMAT:
            raise ValueError(f"module twin schemaVersion {schema!r} is not one this agent ({__version__}) reads ({AGENT_FORMAT!r})")
        try:
            found = desired_from_agent(entry)
        except KeyError as exc:
            raise ValueError(f"properties.desired.models.{key} lacks {exc}") from None
        except ValueError as exc:
            raise ValueError(f"properties.desired.models.{key}: {exc}") from None
        self._note_ignored_cap(key, entry.get(CAP_KEY), found)
        if not sas:
            return found
        parts = urlsplit(found.uri)
        if parts.scheme != "https" and parts.hostname not in LOOPBACK:
            raise ValueError(
                f"properties.desired.models.{key}.uri is {parts.scheme}://, not https://: the store's SAS is only ever sent over TLS"
            )
        return replace(found, uri=f"{found.uri}?{sas}")

    def _note_ignored_cap(self, key: str, raw: object, found: DesiredModel) -> None:
        with self._lock:
            if raw is None or found.max_download_bytes_per_second is not None:
                self._ignored_caps.pop(key, None)
                return
            if key in self._ignored_caps and self._ignored_caps[key] == raw:
                return
            self._ignored_caps[key] = raw
        log.warning(
            "properties.desired.models.%s.%s is %r, not a positive whole number of bytes a second: ignored, downloads are not capped",
            key,
            CAP_KEY,
            raw,
        )

    def report(self, report: DeviceReport) -> None:
        key = model_key(report.model)
        with self._lock:
            entry = copy.deepcopy(self._models_locked().get(key))
            sas = self._sas()
        with self._report_lock:
            if entry is None:
                if key in self._reported:
                    self.client.patch_twin_reported_properties({"models": {key: None}})
                    self._reported.discard(key)
                    self._sent.pop(key, None)
                    log.info("%s left the desired properties: its reported entry is removed", report.model)
                return
            patch = reported_entry(report, entry, sas, previous=self._sent.get(key))
            self.client.patch_twin_reported_properties({"models": {key: patch}})
            self._reported.add(key)
            self._sent[key] = merge_patch(copy.deepcopy(self._sent.get(key) or {}), dict(patch))

    def _forget_reports(self, reported: dict[str, Any], wanted: set[str]) -> None:
        """Removes reported entries of models no longer desired (left by an earlier run, or missed patches)."""
        models = reported.get("models")
        present = {k for k, v in models.items() if v is not None} if isinstance(models, dict) else set()
        with self._report_lock:
            self._reported |= present
            if isinstance(models, dict):  # what the twin holds, so that the next report nulls what it no longer has
                self._sent.update({k: copy.deepcopy(v) for k, v in models.items() if isinstance(v, dict) and k not in self._sent})
            gone = sorted(k for k in self._reported if k not in wanted)
            if not gone:
                return
            try:
                self.client.patch_twin_reported_properties({"models": {k: None for k in gone}})
            except Exception as exc:  # noqa: BLE001 - retried at the next refresh or report
                log.warning("could not remove reported entries of %s: %s", ", ".join(gone), exc)
                return
            self._reported -= set(gone)
            for k in gone:
                self._sent.pop(k, None)
        log.info("removed reported entries of models no longer desired: %s", ", ".join(gone))

    def close(self) -> None:
        try:
            self.client.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            log.warning("module client shutdown: %s", exc)


# -- trust ---------------------------------------------------------------------------------------------------------
class TrustRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Trust:
    pem: bytes
    key_id: str
    source: str


def resolve_trust(file_pem: bytes | None, twin_trust: object, pinned_key_id: str | None = None, file_label: str = "--public-key") -> Trust:
    """The key models must be signed with. A key file given on the command line wins. Otherwise the twin's
    `trust.publicKeyPem` is used only if its key id is the twin's `trust.keyId` (and the pinned id, if any)."""
    if file_pem is not None:
        try:
            key_id = key_id_of(load_public_key(file_pem, file_label))
        except EdgefleetError as exc:
            raise TrustRefused(str(exc).splitlines()[0]) from None
        source = file_label
    else:
        if (
            not isinstance(twin_trust, dict)
            or not isinstance(twin_trust.get("publicKeyPem"), str)
            or not isinstance(twin_trust.get("keyId"), str)
        ):
            raise TrustRefused("no trusted key: the module twin has no trust.publicKeyPem and trust.keyId, and no --public-key was given")
        try:
            key_id = key_id_of(load_public_key(twin_trust["publicKeyPem"].encode("utf-8"), "module twin trust.publicKeyPem"))
        except EdgefleetError as exc:
            raise TrustRefused(exc.problem) from None
        if key_id != twin_trust["keyId"]:
            raise TrustRefused(f"trust.keyId {twin_trust['keyId']} does not match the key in trust.publicKeyPem ({key_id})")
        file_pem = twin_trust["publicKeyPem"].encode("utf-8")
        source = "module twin trust"
    if pinned_key_id and key_id != pinned_key_id:
        raise TrustRefused(f"the {source} key is {key_id}, not the pinned --trusted-key-id {pinned_key_id}")
    return Trust(file_pem, key_id, source)


# -- one agent per model ---------------------------------------------------------------------------------------------
@dataclass
class _Running:
    agent: DeviceAgent
    stop: threading.Event
    thread: threading.Thread | None


class EdgeSupervisor:
    """Keeps one DeviceAgent per desired model (or only `model`), all under one trusted key, in one process: each
    agent joins `registry` (the device's one inference endpoint) when it starts and leaves it when it stops.

    A refused trusted key runs no agent: every desired model is reported `failed` with the reason, so the
    ring's gate counts the device as failed rather than waiting for it. If the twin's key changes to another
    valid one, every agent restarts under it (what they serve is re-verified against the new key).
    """

    def __init__(
        self,
        transport: IoTEdgeTransport,
        device_id: str,
        state_dir: Path,
        *,
        public_key_pem: bytes | None = None,
        pinned_key_id: str | None = None,
        model: str | None = None,
        providers: Iterable[str] = ("CPUExecutionProvider",),
        sync_seconds: float = 0.5,
        report_seconds: float = 60.0,
        infer_interval: float = 0.0,
        synthetic_traffic: bool = False,
        registry: ModelRegistry | None = None,
        threaded: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.device_id = device_id
        self.state_dir = Path(state_dir)
        self.public_key_pem = public_key_pem
        self.pinned_key_id = pinned_key_id
        self.model = model
        self.providers = list(providers)
        self.sync_seconds = sync_seconds
        self.report_seconds = report_seconds
        self.infer_interval = infer_interval
        self.synthetic_traffic = synthetic_traffic
        self.registry = registry
        self.threaded = threaded
        self._clock = clock
        self.agents: dict[str, _Running] = {}
        self.trust: Trust | None = None
        self.refusal: str | None = None
        self._refusal_reported_at: float | None = None
        self._start_problems: dict[str, str] = {}

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - supervision goes on; the agents keep serving
                log.exception("%s: supervision step failed", self.device_id)
            stop.wait(self.sync_seconds)

    def step(self) -> None:
        try:
            self.transport.refresh()
        except Exception as exc:  # noqa: BLE001 - offline: keep the last desired properties
            log.warning("%s: cannot read the module twin, keeping the last desired properties: %s", self.device_id, exc)
        try:
            trust = resolve_trust(self.public_key_pem, self.transport.trust(), self.pinned_key_id)
        except TrustRefused as exc:
            if self.trust is None:
                self._report_refusal(exc.reason)
                return
            if exc.reason != self.refusal:
                log.error(
                    "%s: refusing the module twin's new trusted key (%s); agents keep the key %s",
                    self.device_id,
                    exc.reason,
                    self.trust.key_id,
                )
                self.refusal = exc.reason
            trust = self.trust
        else:
            if self.refusal is not None:
                log.info("%s: trusted key %s accepted (%s)", self.device_id, trust.key_id, trust.source)
            self.refusal = None
        if self.trust is not None and trust.key_id != self.trust.key_id:
            log.warning(
                "%s: the trusted key changed from %s to %s: restarting every model's agent under it",
                self.device_id,
                self.trust.key_id,
                trust.key_id,
            )
            for name in list(self.agents):
                self._stop(name, unload=False)
        self.trust = trust
        wanted = self._wanted()
        for name in sorted(set(self.agents) - wanted):
            self._stop(name, unload=True)
        for name in sorted(wanted - set(self.agents)):
            self._start(name, trust)

    def _wanted(self) -> set[str]:
        if self.model is not None:
            return {self.model}  # the agent itself unloads and clears its entry when the model leaves
        return {e["model"] for e in self.transport.models().values() if isinstance(e.get("model"), str) and e["model"]}

    def _start(self, name: str, trust: Trust) -> None:
        from edgefleet_agent.core import DeviceAgent
        from edgefleet_agent.store import StoreError

        agent = None
        try:
            agent = DeviceAgent(self.device_id, name, self.state_dir, trust.pem, self.transport, execution_providers=self.providers)
            agent.start()
        except (StoreError, OSError, EdgefleetError) as exc:
            if agent is not None:
                agent.close()
            if self._start_problems.get(name) != str(exc):
                log.error("%s: cannot start the agent for %s (retrying): %s", self.device_id, name, exc)
                self._start_problems[name] = str(exc)
            return
        self._start_problems.pop(name, None)
        if self.registry is not None:
            self.registry.add(agent)
        stop = threading.Event()
        thread = None
        if self.threaded:
            thread = threading.Thread(target=self._serve, args=(agent, stop), name=f"agent-{name}", daemon=True)
            thread.start()
        self.agents[name] = _Running(agent, stop, thread)
        log.info("%s: agent for %s started (key %s from %s)", self.device_id, name, trust.key_id, trust.source)

    def _serve(self, agent: DeviceAgent, stop: threading.Event) -> None:
        try:
            agent.serve_forever(
                stop,
                sync_seconds=self.sync_seconds,
                report_seconds=self.report_seconds,
                infer_interval_seconds=self.infer_interval,
                synthetic_traffic=self.synthetic_traffic,
            )
        except Exception:  # noqa: BLE001
            log.exception("%s: the agent for %s stopped unexpectedly", self.device_id, agent.model)

    def _stop(self, name: str, unload: bool) -> None:
        running = self.agents.pop(name)
        if self.registry is not None:
            self.registry.remove(name)
        running.stop.set()
        if running.thread is not None:
            running.thread.join()
        try:
            if unload:
                running.agent.sync()  # the model left the desired properties: record the unload on disk
            running.agent.report()  # the transport removes the reported entry of a model no longer desired
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: final report for %s failed: %s", self.device_id, name, exc)
        finally:
            running.agent.close()
        log.info("%s: agent for %s stopped", self.device_id, name)

    def _report_refusal(self, reason: str) -> None:
        now = self._clock()
        if reason == self.refusal and self._refusal_reported_at is not None and now - self._refusal_reported_at < self.report_seconds:
            return
        if reason != self.refusal:
            log.error("%s: trusted key refused, serving nothing: %s", self.device_id, reason)
        self.refusal, self._refusal_reported_at = reason, now
        for key, entry in self.transport.models().items():
            name = m if isinstance(m := entry.get("model"), str) else key
            if self.model is not None and name != self.model:
                continue
            try:
                self.transport.report(
                    DeviceReport(
                        device_id=self.device_id,
                        model=name,
                        version=None,
                        sha256=None,
                        status="failed",
                        error=f"trusted key refused: {reason}",
                        failed_version=entry.get("version"),
                        agent_version=__version__,
                        reported_at=time.time(),
                    )
                )
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: could not report the refusal for %s: %s", self.device_id, name, exc)

    def close(self) -> None:
        for name in list(self.agents):
            self._stop(name, unload=False)
