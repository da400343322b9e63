"""DeviceAgent: keeps one model served on a device, moves it to the desired version only when that version
verifies, and reports what it serves and how it behaves.

Guarantees (tested in tests/agent):
  * nothing is served unless its signed manifest verifies against the trusted key and the file on disk
    matches the digest and size the manifest pins, both when installed and again at every start;
  * no downgrade (and no different artifact under the same version) without a rollback order signed by
    the same key naming exactly that model, version and sha256;
  * on a device given the stack's TUF root (trust.py), a new install, and a shadow candidate, must be a current
    signed target in fresh update metadata: a revoked version is refused even when its desired state is replayed;
  * a refused version is reported with the reason and not retried until the desired state changes
    (download failures, which may be transient, are retried with exponential backoff);
  * a forward swap waits while an application defers it (at most MAX_DEFER_SECONDS from the first ask) and while the
    desired state's maintenance windows are closed (reported as pending, with the reason); a rollback order never
    waits, and windows that do not parse refuse the swap instead of being read as "always open";
  * a swap is one reference assignment after the new session has loaded and run: requests in flight finish
    on the old session, and the on-disk pointer is renamed into place before that assignment, so a kill at
    any instant restarts on a verified model, old or new.

Requests come from the device's applications through `predict()` (the inference endpoint calls it; so can any
code in the process), always on the current verified version; `infer()` is one synthetic request through the same
path. Each report carries what those requests showed (telemetry.py, bounded). When the desired state names a
`shadow` candidate, it is verified like an install (no downgrade rule: it is never served), loaded, and run on the
same requests on a thread of its own (shadow.py); its slot is kept beside the pointer's, never named by it, and a
later install of that version reuses the slot and the loaded session.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Callable, Hashable, Iterable, Literal

import numpy as np

from edgefleet_agent import __version__
from edgefleet_agent.capture import Capturer, CaptureSink
from edgefleet_agent.contract.artifact import verify_artifact
from edgefleet_agent.contract.capture import CaptureSpec
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import REFERENCE_KIND, ModelManifest, parse_manifest_bytes, version_key
from edgefleet_agent.contract.signing import Envelope, SignatureError, load_public_key, parse_rollback_order, verify_bytes
from edgefleet_agent.contract.state import (
    DEFERRED_BY_APPLICATION,
    DesiredModel,
    DeviceReport,
    DeviceStatus,
    deferral_summary,
    outside_window,
)
from edgefleet_agent.contract.tuf import MetadataRefused, patch_uri
from edgefleet_agent.contract.windows import Windows
from edgefleet_agent.delta import METHOD as PATCH_METHOD
from edgefleet_agent.delta import PatchError, apply_patch
from edgefleet_agent.download import DigestMismatch, FetchError, download
from edgefleet_agent.serving import (
    InferenceFailed,
    LoadedModel,
    LoadError,
    NotReady,
    Prediction,
    RequestError,
    RequestTiming,
    SessionCache,
    VersionNotServed,
    available_providers,
    check_inputs,
    choose_providers,
    load_model,
)
from edgefleet_agent.shadow import ShadowRunner
from edgefleet_agent.store import Pointer, SlotRef, SlotStore, StoreError, pause_point
from edgefleet_agent.telemetry import Said, Totals, Window, read_output
from edgefleet_agent.transports import Transport
from edgefleet_agent.variants import Build, DeviceFacts, NoVariantFits, builds, choose, this_device

if TYPE_CHECKING:  # python-tuf loads only on a device given its TUF root (edgefleet_agent/trust.py)
    from edgefleet_agent.trust import TrustedMetadata

log = logging.getLogger("edgefleet.agent")

RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
MAX_DEFER_SECONDS = 900.0  # how long an application may hold back one swap, however often it asks
SETTLE_WAIT_SECONDS = 0.5  # a report waits this long at most for answers sent and not yet accounted for
PATCH_MEMORY_BYTES = 16 << 20  # what applying a patch may hold (docs/deltas.md); --patch-memory-mb


class Refused(Exception):
    """A desired version the agent will not serve, with the sentence it reports."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True, eq=False)
class _Serving:
    ref: SlotRef
    manifest: ModelManifest
    loaded: LoadedModel
    key: Hashable
    totals: Totals = field(default_factory=Totals)  # since it began serving: the endpoint's statistics


@dataclass(frozen=True, eq=False)
class _Candidate:
    """The shadow: verified and loaded like an install, run beside the served version, never served."""

    desired: DesiredModel
    ref: SlotRef
    manifest: ModelManifest
    key: Hashable
    runner: ShadowRunner


class Answer:
    """What `DeviceAgent.run` returns: the served version's outputs, to be accounted for once with `settle`."""

    __slots__ = ("_agent", "serving", "feed", "values", "ms", "_prediction")

    def __init__(self, agent: DeviceAgent, serving: _Serving, feed: dict[str, np.ndarray], values: list[np.ndarray], ms: float) -> None:
        self._agent, self.serving, self.feed, self.values, self.ms = agent, serving, feed, values, ms
        self._prediction: Prediction | None = None

    @property
    def version(self) -> str:
        return self.serving.ref.version

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        return dict(zip(self.serving.loaded.output_names, self.values, strict=True))

    def settle(self, label: int | None = None, timing: RequestTiming | None = None, answered: bool = True) -> Prediction:
        """Records the answer (telemetry, statistics, shadow, capture) once; later calls return the same Prediction.
        `timing`: the endpoint's (input, output, whole request) nanoseconds around the model. `answered` False: the
        model ran but its answer could not be sent; the statistics count a failed request, the report the model's run."""
        if self._prediction is None:
            self._prediction = self._agent._settle(self, label, timing, answered)
        return self._prediction


@dataclass(frozen=True)
class _Refusal:
    desired: DesiredModel
    reason: str
    retry_at: float | None  # None: never retried until the desired state changes
    attempts: int


def variant_uri(reference_uri: str, file: str) -> str:
    """Variants are published beside the reference: the same location with the variant's file name."""
    base, sep, _ = reference_uri.rpartition("/")
    return f"{base}{sep}{file}" if sep else file


def build_uri(desired: DesiredModel, build: Build) -> str:
    """Where to fetch `build`: the reference at the desired URI; a variant where the desired state lists it (Azure's
    twin, format 3), else beside the reference. A listed digest that is not the signed one is refused before fetching."""
    if build.kind == REFERENCE_KIND:
        return desired.uri
    listed = desired.variant_uri(build.kind)
    if listed is None:
        return variant_uri(desired.uri, build.file)
    uri, sha256 = listed
    if sha256 != build.sha256:
        raise Refused(f"the desired state lists the {build.kind} variant with sha256 {sha256}, the signed manifest pins {build.sha256}")
    return uri


def window_wait(desired: DesiredModel, now: float) -> str | None:
    """Why a swap to `desired` must wait at `now` for the group's maintenance window (the sentence reported while it
    does), or None when it may go: a window is open, the desired state names none, or it is a rollback (a bad version
    must go whatever the hour). Windows that do not parse return None here; the install refuses them."""
    held = _window_hold(desired, now)
    return held[0] if held is not None else None


def _window_hold(desired: DesiredModel, now: float) -> tuple[str, str] | None:
    """(window_wait's sentence, the report's `deferred`: the same on every device of the group whatever its clock)."""
    if desired.rollback_order is not None or not desired.windows:
        return None
    try:
        windows = Windows.from_document(desired.windows)
    except ValueError:
        return None
    if windows is None or windows.open_until(now) is not None:
        return None
    opens = windows.next_open(now)
    when = (
        "no window opens within a year"
        if opens is None
        else "the next opens " + datetime.fromtimestamp(opens, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    )
    described = windows.describe()
    return f"swap to {desired.version} waits for the maintenance window ({described}): {when}", outside_window(described)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class DeviceAgent:
    def __init__(
        self,
        device_id: str,
        model: str,
        state_dir: Path,
        trusted_key_pem: bytes,
        transport: Transport,
        execution_providers: Iterable[str] = ("CPUExecutionProvider",),
        durable: bool = True,
        session_cache: SessionCache | None = None,
        refuse_invalid_warmup: bool = False,
        clock: Callable[[], float] = time.time,
        trust: TrustedMetadata | None = None,
        capture_sink: CaptureSink | None = None,
        timer: Callable[[], float] = perf_counter,
        variant: str | None = None,
        device: DeviceFacts | None = None,
        patch_memory_bytes: int = PATCH_MEMORY_BYTES,
    ) -> None:
        """`durable=False` skips fsyncs and the state-directory lock: for simulated devices in one process only.
        `session_cache` shares sessions between agents of one process. `refuse_invalid_warmup` refuses a model
        whose warm-up output holds NaN/Inf; by default such a model is served and the ring's gate judges it.
        `trust`: the store's TUF metadata (trust.py); with it, a new install must be a current signed target.
        `capture_sink` is where this device may write captured samples (capture.py); without one, a desired state
        that asks for capture captures nothing. `timer` times each request's session.run: a simulated fleet passes
        time.thread_time, the CPU time of the request's own thread, since its wall time on a machine shared by
        thousands of simulated devices would measure the others. `variant` asks for one build of each version (its
        kind); without it the agent installs the best build `device` can run (variants.py; default: what this machine
        reports). `patch_memory_bytes`: the most memory applying a patch may hold (docs/deltas.md); 0 never tries one."""
        self.device_id = device_id
        self.timer = timer
        self.model = model
        self.transport = transport
        self.execution_providers = list(execution_providers)
        self.refuse_invalid_warmup = refuse_invalid_warmup
        self.clock = clock
        self.store = SlotStore(Path(state_dir) / model, model, durable=durable)  # a device dir can hold several models
        self._trusted = load_public_key(trusted_key_pem, f"{device_id}: trusted public key")
        self._cache = session_cache if session_cache is not None else SessionCache()
        self._sync_lock = threading.RLock()  # one install at a time; start() runs under it too
        self._state_lock = threading.Lock()  # what a report snapshots together
        self._metrics_lock = threading.Lock()
        self._settling = threading.Condition()  # answers sent but not yet accounted for (`run`), which a report waits for
        self._unsettled = 0
        self._started = False
        self._pointer = Pointer()
        self._serving: _Serving | None = None
        self._refusal: _Refusal | None = None
        self._installing: DesiredModel | None = None
        self._notice: str | None = None  # a problem found at start, reported until the next change
        self.max_defer_seconds = MAX_DEFER_SECONDS
        self._defer_started: float | None = None  # the pending swap's first deferral
        self._deferred_until: float | None = None
        self._deferral: str | None = None  # "swap to … deferred …", reported while it holds
        self._held: str | None = None  # the report's `deferred` beside it: the cause alone, for grouping
        self._window = Window()
        self._feed_counter = 0
        self._trust = trust
        self._candidate: _Candidate | None = None  # the shadow
        self._candidate_refusal: _Refusal | None = None
        self.capture = Capturer(device_id, model, self.store.root, capture_sink, clock)
        self._capture_problem: str | None = None  # a capture setting this agent could not read
        self.variant = variant
        self._device = device
        self.patch_memory_bytes = patch_memory_bytes
        self._fetched: dict[str, object] | None = None  # how the last _fetch_slot got its file
        self._update: dict[str, object] | None = None  # how the last install was fetched (the report's `update`)

    # -- what is served -------------------------------------------------------------------------------
    @property
    def current_version(self) -> str | None:
        serving = self._serving
        return serving.ref.version if serving else None

    @property
    def current_sha256(self) -> str | None:
        serving = self._serving
        return serving.ref.sha256 if serving else None

    def served(self) -> tuple[str, ModelManifest] | None:
        """The served version and its signed manifest, read together (None when nothing is served)."""
        serving = self._serving
        return (serving.ref.version, serving.manifest) if serving else None

    @property
    def current_variant(self) -> str | None:
        """The kind of build served (fp32: the reference), None when nothing is served."""
        serving = self._serving
        return self.store.slot_kind(serving.ref.slot) if serving else None

    def device_facts(self) -> DeviceFacts:
        if self._device is None:
            self._device = this_device(self.device_id, available_providers())
        return self._device

    def _build_for(self, manifest: ModelManifest) -> Build:
        """The build of this version to install: the asked-for kind or the best fit; Refused if the device runs none.
        A version without variants installs its reference, as agents before 0.4.0 did (the controller matched it to the
        group's hardware)."""
        if not manifest.variants and self.variant in (None, REFERENCE_KIND):
            return builds(manifest)[0]
        try:
            return choose(manifest, self.device_facts(), self.variant)
        except NoVariantFits as exc:
            raise Refused(f"{exc.where}: {exc.problem} (fix: {exc.fix})") from None

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the served session actually runs on."""
        serving = self._serving
        return serving.loaded.providers if serving else ()

    @property
    def status(self) -> DeviceStatus:
        return self._status(self._serving, self._refusal, self._installing)

    def outcome(self, desired: DesiredModel) -> tuple[Literal["installed", "refused", "pending"], str]:
        """What became of `desired` so far: installed (served now), refused (with the reason), or pending (not synced
        yet, or installing). A platform that waits for the agent's answer (Greengrass's model components) reads it."""
        serving, refusal, installing = self._serving, self._refusal, self._installing
        if installing is None and serving is not None and (serving.ref.version, serving.ref.sha256) == (desired.version, desired.sha256):
            return "installed", ""
        if installing is None and refusal is not None and refusal.desired == desired:
            return "refused", refusal.reason
        return "pending", ""

    @staticmethod
    def _status(serving: _Serving | None, refusal: _Refusal | None, installing: DesiredModel | None) -> DeviceStatus:
        if installing is not None:
            return "updating"
        if refusal is not None:
            return "failed"
        return "ok" if serving is not None else "idle"

    # -- start-up -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Serves what the pointer names only after re-verifying it; falls back to the previous slot, else nothing."""
        with self._sync_lock:
            if self._started:
                return
            self.store.lock()
            try:
                pointer = self.store.read_pointer()
            except StoreError as exc:
                log.error("%s: %s; serving nothing until the desired state installs a model", self.device_id, exc)
                try:
                    self.store.clean(keep=None)
                except OSError as clean_exc:
                    log.warning("%s: could not remove temporary files: %s", self.device_id, clean_exc)
                self._notice = f"at start: {exc}"
                self._started = True
                return
            serving, problems = None, []
            if pointer.current is not None:
                for ref in (pointer.current, pointer.previous):
                    if ref is None:
                        continue
                    try:
                        serving = self._open_slot(ref)
                        break
                    except Refused as exc:
                        problems.append(f"{ref.version} ({ref.slot}): {exc.reason}")
                        log.error("%s: not serving %s %s: %s", self.device_id, self.model, ref.version, exc.reason)
            recovered = pointer
            if pointer.current is not None and serving is None:
                recovered = Pointer()
            elif serving is not None and serving.ref != pointer.current:
                recovered = Pointer(current=serving.ref)
            if recovered != pointer:
                try:
                    self.store.write_pointer(recovered)
                except OSError as exc:
                    log.error("%s: could not record the recovery on disk: %s", self.device_id, exc)
            self._pointer = recovered
            self._clean_quietly()
            if problems:
                outcome = f"serving previous {serving.ref.version}" if serving else "serving nothing"
                self._notice = "at start: slot failed verification: " + "; ".join(problems) + f"; {outcome}"
            with self._state_lock:
                with self._metrics_lock:
                    self._serving = serving
                    self._window = Window(serving.loaded.watch if serving else None)
            if serving is not None:
                log.info(
                    "%s: serving %s %s after re-verifying it (providers %s)",
                    self.device_id,
                    self.model,
                    serving.ref.version,
                    ",".join(serving.loaded.providers),
                )
            self._started = True

    def _verify_slot(self, slot: str) -> ModelManifest:
        model_path, manifest_path, signature_path = self.store.slot_files(slot)
        try:
            manifest_bytes, signature_bytes = manifest_path.read_bytes(), signature_path.read_bytes()
        except OSError as exc:
            raise Refused(f"slot {slot} is incomplete: {exc.strerror}: {exc.filename}") from None
        try:
            kind = self.store.slot_kind(slot)
            return verify_artifact(manifest_bytes, signature_bytes, model_path, self._trusted, str(self.store.slot_dir(slot)), kind)
        except SignatureError as exc:
            raise Refused(f"slot {slot} does not verify: {exc.problem}") from None
        except EdgefleetError as exc:
            raise Refused(f"slot {slot} holds an invalid manifest: {exc.problem}") from None

    def _open_slot(self, ref: SlotRef) -> _Serving:
        manifest = self._verify_slot(ref.slot)
        if (manifest.name, manifest.version, manifest.sha256) != (self.model, ref.version, ref.sha256):
            raise Refused(f"slot {ref.slot} holds {manifest.name} {manifest.version}, but the pointer names {self.model} {ref.version}")
        model_path, _, _ = self.store.slot_files(ref.slot)
        loaded, key = self._load(manifest, model_path)
        return _Serving(ref, manifest, loaded, key)

    def _load(self, manifest: ModelManifest, model_path: Path) -> tuple[LoadedModel, Hashable]:
        providers = choose_providers(self.execution_providers, available_providers())
        key = (manifest.sha256, tuple(providers))
        try:
            loaded = self._cache.acquire(key, lambda: load_model(model_path, manifest, providers, self._cache.feeds(manifest)))
        except LoadError as exc:
            raise Refused(str(exc)) from None
        if loaded.warmup_invalid and self.refuse_invalid_warmup:
            self._cache.release(key)
            raise Refused(
                f"warm-up inference of {manifest.name} {manifest.version} produced NaN or infinite values "
                f"in output(s) {', '.join(loaded.warmup_invalid)}"
            )
        return loaded, key

    # -- desired state --------------------------------------------------------------------------------
    def sync(self) -> bool:
        """Moves to the desired state if it verifies. Never raises for a bad artifact; True if anything changed."""
        with self._sync_lock:
            if not self._started:
                self.start()
            try:
                desired = self.transport.desired(self.device_id, self.model)
            except Exception as exc:
                log.warning("%s: cannot read the desired state, keeping what is served: %s", self.device_id, exc)
                return False
            if self._trust is not None:
                self._trust.poll()  # a frozen channel becomes "metadata stale since …"; serving goes on
            self._sync_capture(desired)
            if desired is None:
                shadow_changed = self._drop_candidate()
                return self._unload() or shadow_changed
            changed = self._sync_served(desired)
            return self._sync_candidate(desired) or changed

    def _sync_capture(self, desired: DesiredModel | None) -> None:
        """Sample capture as the desired state says (off without it); a setting this agent cannot read turns it off."""
        body = desired.capture if desired is not None else None
        try:
            spec = CaptureSpec.from_json(body)
            problem = None
        except EdgefleetError as exc:
            spec, problem = None, f"capture setting refused: {exc.problem}"
        if problem != self._capture_problem and problem is not None:
            log.warning("%s: %s; capturing nothing", self.device_id, problem)
        self._capture_problem = problem
        self.capture.configure(spec, desired.rollout if desired is not None else "")

    def _retry(self, refusal: _Refusal | None, desired: DesiredModel) -> int | None:
        """The attempt number for `desired`, or None while a refusal of exactly it stands (or waits to be retried)."""
        if refusal is None or refusal.desired != desired:
            return 1
        if refusal.retry_at is None or self.clock() < refusal.retry_at:
            return None
        return refusal.attempts + 1

    def _refusal_of(self, desired: DesiredModel, exc: Refused, attempts: int) -> _Refusal:
        retry_at = None
        if exc.transient:
            retry_at = self.clock() + min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(attempts - 1, 16))
        return _Refusal(desired, exc.reason, retry_at, attempts)

    def defer(self, seconds: float) -> float:
        """An application busy with something that must not see a swap asks to hold the next one back `seconds` more.
        Returns until when; one swap is held back at most max_defer_seconds from the first ask, however often it
        asks. A rollback order never waits (a bad version must go), nor does a device serving nothing."""
        now = self.clock()
        with self._state_lock:
            if self._deferred_until is not None and now >= self._deferred_until and self._deferral is None:
                self._defer_started = self._deferred_until = None  # expired with no swap held: this ask starts anew
            if self._defer_started is None:
                self._defer_started = now
            until = min(now + max(0.0, seconds), self._defer_started + self.max_defer_seconds)
            self._deferred_until = max(until, self._deferred_until or now)
            return self._deferred_until

    def deferred_until(self) -> float | None:
        """Until when an application holds swaps back, None when it does not: for a platform whose own runtime applies
        the update (Greengrass's nucleus, answered through DeferComponentUpdate). An expired deferral is forgotten here,
        as a sync forgets it."""
        now = self.clock()
        with self._state_lock:
            if self._deferred_until is None:
                return None
            if now < self._deferred_until:
                return self._deferred_until
            self._defer_started = self._deferred_until = None
            return None

    def _held_back(self, desired: DesiredModel) -> bool:
        """True while an application's deferral, or the group's closed maintenance window, holds `desired` back (a
        forward swap only: a rollback order never waits)."""
        now = self.clock()
        with self._state_lock:
            if self._deferred_until is not None and now < self._deferred_until and desired.rollback_order is None:
                when = datetime.fromtimestamp(self._deferred_until, timezone.utc).strftime("%H:%M:%S UTC")
                self._deferral = f"swap to {desired.version} {DEFERRED_BY_APPLICATION} until {when}"
                self._held = DEFERRED_BY_APPLICATION
                return True
            if self._deferred_until is not None and now >= self._deferred_until:
                self._defer_started = self._deferred_until = None
            waits = _window_hold(desired, now)
            self._deferral, self._held = waits if waits is not None else (None, None)
            return waits is not None

    def _sync_served(self, desired: DesiredModel) -> bool:
        serving = self._serving
        if serving is not None and (serving.ref.version, serving.ref.sha256) == (desired.version, desired.sha256):
            with self._state_lock:
                self._deferral = self._held = None
            return self._forget_refusal()
        if serving is not None and self._held_back(desired):
            return False
        refusal = self._refusal
        attempts = self._retry(refusal, desired)
        if attempts is None:
            return False
        self._installing = desired
        try:
            self._install(desired)
            return True
        except Refused as exc:
            made = self._refusal_of(desired, exc, attempts)
            with self._state_lock:
                self._refusal = made
            log.warning(
                "%s: refused %s %s: %s%s",
                self.device_id,
                self.model,
                desired.version,
                exc.reason,
                f" (retrying in {made.retry_at - self.clock():.0f} s)" if made.retry_at else "",
            )
            self._clean_quietly()
            return refusal is None or refusal.desired != desired or refusal.reason != exc.reason
        finally:
            self._installing = None

    def _forget_refusal(self) -> bool:
        if self._refusal is None:
            return False
        with self._state_lock:
            self._refusal = None
        return True

    def _install(self, desired: DesiredModel) -> None:
        if desired.rollback_order is None and desired.windows:
            try:  # _held_back let it through: windows that do not parse are refused, never guessed at
                Windows.from_document(desired.windows)
            except ValueError as exc:
                raise Refused(str(exc)) from None
        manifest_bytes, signature_bytes = desired.manifest.encode("utf-8"), desired.signature.encode("utf-8")
        manifest = self._verify_desired(desired, manifest_bytes, signature_bytes)
        self._check_trusted(desired, manifest_bytes)
        self._check_not_older(desired, manifest)
        build = self._build_for(manifest)
        slot = self.store.slot_name(manifest.version, manifest_bytes, build.kind)
        self._fetched = None
        try:
            model_path = self._reusable_slot(slot, manifest_bytes)
            fetched = None
            if model_path is None:
                model_path = self._fetch_slot(desired, build, slot, manifest_bytes, signature_bytes)
                fetched = self._fetched
            self._activate(SlotRef(slot, manifest.version, manifest.sha256), manifest, model_path)
            self._update = fetched if fetched is not None else {"path": "reused", "bytes": 0, "fallback": None}
        except OSError as exc:
            raise Refused(
                f"could not write {self.model} {manifest.version} under {self.store.root}: {exc.strerror or exc}", transient=True
            ) from None

    def _verify_desired(self, desired: DesiredModel, manifest_bytes: bytes, signature_bytes: bytes, what: str = "desired") -> ModelManifest:
        source = f"{what} {desired.model} {desired.version}"
        if desired.model != self.model:
            raise Refused(f"desired state names model {desired.model!r}, but this agent serves {self.model!r}")
        try:
            verify_bytes(manifest_bytes, Envelope.parse(signature_bytes, source), self._trusted, source)
        except SignatureError as exc:
            raise Refused(f"signature does not verify: {exc.problem}") from None
        try:
            manifest = parse_manifest_bytes(manifest_bytes, source)
        except EdgefleetError as exc:
            raise Refused(f"the signed manifest is not a valid model manifest: {exc.problem}") from None
        mismatches = [
            f"{name} {mine!r} vs signed {signed!r}"
            for name, mine, signed in (
                ("model", desired.model, manifest.name),
                ("version", desired.version, manifest.version),
                ("sha256", desired.sha256, manifest.sha256),
                ("size", desired.size, manifest.size),
            )
            if mine != signed
        ]
        if mismatches:
            raise Refused("desired state does not match its signed manifest: " + "; ".join(mismatches))
        if version_key(manifest.min_agent_version) > version_key(__version__):
            raise Refused(
                f"{manifest.name} {manifest.version} needs agent {manifest.min_agent_version} or newer; this agent is {__version__}"
            )
        return manifest

    def _check_trusted(self, desired: DesiredModel, manifest_bytes: bytes) -> None:
        """The update metadata (TUF, trust.py) must list exactly this artifact and manifest as a current target."""
        if self._trust is None:
            return
        try:
            self._trust.check(desired.model, desired.version, desired.sha256, desired.size, manifest_bytes)
        except MetadataRefused as exc:
            raise Refused(exc.reason, transient=exc.transient) from None

    def _check_not_older(self, desired: DesiredModel, manifest: ModelManifest) -> None:
        """Compares with the served version, or when idle with the last one served."""
        ref = self._pointer.current or self._pointer.previous
        if ref is None:
            return
        new, old = version_key(manifest.version), version_key(ref.version)
        if new > old or (new == old and manifest.sha256 == ref.sha256):
            return
        if new < old:
            refused = f"downgrade from {ref.version} to {manifest.version} refused: "
        else:
            refused = f"replacing {ref.version} (sha256 {ref.sha256[:12]}…) with a different {manifest.version} artifact refused: "
        if not desired.rollback_order or not desired.rollback_signature:
            raise Refused(refused + "no signed rollback order")
        source = f"rollback order for {self.model} {manifest.version}"
        order_bytes = desired.rollback_order.encode("utf-8")
        try:
            verify_bytes(order_bytes, Envelope.parse(desired.rollback_signature.encode("utf-8"), source), self._trusted, source)
        except SignatureError as exc:
            raise Refused(refused + f"rollback order signature does not verify: {exc.problem}") from None
        try:
            order = parse_rollback_order(order_bytes, source)
        except SignatureError as exc:
            raise Refused(refused + exc.problem) from None
        if (order["model"], order["version"], order["sha256"]) != (self.model, manifest.version, manifest.sha256):
            raise Refused(
                refused + f"the signed rollback order names {order['model']} {order['version']} "
                f"(sha256 {order['sha256'][:12]}…), not {self.model} {manifest.version} (sha256 {manifest.sha256[:12]}…)"
            )
        if (order["from_version"], order["from_sha256"]) != (ref.version, ref.sha256):
            raise Refused(
                refused + f"the signed rollback order moves devices off {order['from_version']} "
                f"(sha256 {order['from_sha256'][:12]}…), but this device runs {ref.version} (sha256 {ref.sha256[:12]}…)"
            )
        log.warning(
            "%s: %s %s -> %s under a signed rollback order: %s", self.device_id, self.model, ref.version, manifest.version, order["reason"]
        )

    def _reusable_slot(self, slot: str, manifest_bytes: bytes) -> Path | None:
        """A slot already holding this signed version (the previous one, on a rollback) saves a download."""
        model_path, manifest_path, _ = self.store.slot_files(slot)
        try:
            if not manifest_path.is_file() or manifest_path.read_bytes() != manifest_bytes:
                return None
            self._verify_slot(slot)
        except (OSError, Refused) as exc:
            log.info("%s: slot %s cannot be reused, downloading again: %s", self.device_id, slot, exc)
            return None
        return model_path

    def _fetch_slot(self, desired: DesiredModel, build: Build, slot: str, manifest_bytes: bytes, signature_bytes: bytes) -> Path:
        """Downloads only the chosen build and checks it exactly as the reference is checked: size, sha256, signature."""
        part = self.store.download_path(slot)
        uri = build_uri(desired, build)
        patched, why = self._patched(desired, build, part)
        if patched is not None:
            self._fetched = {"path": "delta", "bytes": patched, "fallback": None}  # apply_patch checked sha256 and size
        else:
            if why is not None:
                log.info("%s: downloading %s %s whole: %s", self.device_id, self.model, desired.version, why)
            try:
                download(uri, part, expected_size=build.size, expected_sha256=build.sha256, max_bytes_per_second=desired.download_rate)
            except DigestMismatch as exc:
                what = "artifact" if build.kind == REFERENCE_KIND else f"{build.kind} variant"
                raise Refused(
                    f"sha256 mismatch: the downloaded {what} has sha256 {exc.actual}, the signed manifest pins {exc.expected}"
                ) from None
            except FetchError as exc:
                raise Refused(str(exc), transient=True) from None
            self._fetched = {"path": "full", "bytes": build.size, "fallback": why}
        pause_point("downloaded")
        try:
            verify_artifact(manifest_bytes, signature_bytes, part, self._trusted, uri, build.kind)
        except EdgefleetError as exc:
            part.unlink(missing_ok=True)
            raise Refused(f"the downloaded artifact does not verify: {exc.problem}") from None
        return self.store.commit_slot(slot, part, manifest_bytes, signature_bytes)

    def _patched(self, desired: DesiredModel, build: Build, part: Path) -> tuple[int | None, str | None]:
        """Rebuilds the reference artifact into `part` from the verified version served and a patch (docs/deltas.md).
        (patch bytes, None) when it did; (None, why not) when a patch was looked for and not used; (None, None) when
        none applies (nothing verified served, a variant, deltas off). Never trusts the rebuilt file beyond what
        apply_patch checked (the signed sha256 and size); _fetch_slot verifies it as a download."""
        serving = self._serving
        if (
            serving is None
            or self.patch_memory_bytes <= 0
            or build.kind != REFERENCE_KIND
            or serving.ref.sha256 == build.sha256
            or self.store.slot_kind(serving.ref.slot) != REFERENCE_KIND
        ):
            return None, None
        base, _, _ = self.store.slot_files(serving.ref.slot)
        old = serving.ref.sha256
        expected_size: int | None = None
        expected_sha256: str | None = None
        if self._trust is not None:  # only a patch the signed targets list, checked by its own length and sha256
            signed = self._trust.patch(self.model, old, build.sha256, PATCH_METHOD)
            if signed is None:
                return None, f"no signed patch from {serving.ref.version}"
            if signed.memory_bytes > self.patch_memory_bytes:
                return None, f"the patch needs {signed.memory_bytes} bytes of memory, more than the {self.patch_memory_bytes} allowed"
            expected_size, expected_sha256 = signed.size, signed.sha256
        patch_file = part.with_name(part.name + ".patch")
        try:
            digest = download(
                patch_uri(desired.uri, old, build.sha256, PATCH_METHOD),
                patch_file,
                expected_size=expected_size,
                max_bytes_per_second=desired.download_rate,
            )
            if expected_sha256 is not None and digest != expected_sha256:
                return None, f"the downloaded patch has sha256 {digest[:12]}…, the signed targets list {expected_sha256[:12]}…"
            size = patch_file.stat().st_size
            apply_patch(base, patch_file, part, build.sha256, build.size, max_memory_bytes=self.patch_memory_bytes)
        except FetchError as exc:
            return None, f"patch not fetched: {_first_line(exc)}"
        except PatchError as exc:
            return None, f"patch refused ({exc.reason}): {exc.problem[:300]}"
        except OSError as exc:
            return None, f"patch not applied: {exc.strerror or exc}"
        finally:
            patch_file.unlink(missing_ok=True)
        return size, None

    def _activate(self, ref: SlotRef, manifest: ModelManifest, model_path: Path) -> None:
        loaded, key = self._load(manifest, model_path)
        previous = self._pointer.current or self._pointer.previous
        pointer = Pointer(current=ref, previous=None if previous is None or previous.slot == ref.slot else previous)
        try:
            self.store.write_pointer(pointer)
        except BaseException:
            self._cache.release(key)
            raise
        self._switch(_Serving(ref, manifest, loaded, key), pointer)
        log.info(
            "%s: now serving %s %s (build %s, providers %s)",
            self.device_id,
            self.model,
            ref.version,
            self.store.slot_kind(ref.slot),
            ",".join(loaded.providers),
        )
        self._clean_quietly()

    def _switch(self, serving: _Serving | None, pointer: Pointer) -> None:
        """The swap itself: one reference; a request in flight keeps the session it started on."""
        with self._state_lock:
            old = self._serving
            with self._metrics_lock:
                self._serving = serving
                self._window = Window(serving.loaded.watch if serving else None)
            self._pointer = pointer
            self._refusal = None
            self._notice = None
            candidate = self._candidate
        if candidate is not None:
            candidate.runner.retarget(serving)  # the candidate is compared with the version now served
        if old is not None:
            self._cache.release(old.key)

    def _unload(self) -> bool:
        if self._serving is None and self._pointer.current is None and self._refusal is None and self._notice is None:
            return False
        pointer = Pointer(current=None, previous=self._pointer.current or self._pointer.previous)
        if pointer != self._pointer:
            try:
                self.store.write_pointer(pointer)
            except OSError as exc:
                log.error(
                    "%s: could not record the unload on disk (a restart would serve %s again): %s",
                    self.device_id,
                    self.current_version,
                    exc,
                )
        self._switch(None, pointer)
        log.info("%s: desired state is empty; serving nothing", self.device_id)
        return True

    # -- the shadow candidate ---------------------------------------------------------------------------
    def _sync_candidate(self, desired: DesiredModel) -> bool:
        """Loads, keeps or drops the candidate `desired.shadow` names. A candidate equal to the served version is none."""
        wanted = desired.shadow
        if wanted is not None and (wanted.version, wanted.sha256) == (desired.version, desired.sha256):
            wanted = None
        if wanted is None:
            return self._drop_candidate()
        candidate = self._candidate
        if candidate is not None and candidate.desired == wanted:
            return False
        refusal = self._candidate_refusal
        attempts = self._retry(refusal, wanted)
        if attempts is None:
            return False
        dropped = self._drop_candidate(forget_refusal=False)
        try:
            self._load_candidate(wanted)
        except Refused as exc:
            made = self._refusal_of(wanted, exc, attempts)
            with self._state_lock:
                self._candidate_refusal = made
            log.warning("%s: refused shadow candidate %s %s: %s", self.device_id, self.model, wanted.version, exc.reason)
            self._clean_quietly()
            return dropped or refusal is None or refusal.desired != wanted or refusal.reason != exc.reason
        return True

    def _load_candidate(self, wanted: DesiredModel) -> None:
        """Verified exactly as an install (signature, digest, size, min_agent_version, the signed targets), without the
        downgrade rule."""
        manifest_bytes, signature_bytes = wanted.manifest.encode("utf-8"), wanted.signature.encode("utf-8")
        manifest = self._verify_desired(wanted, manifest_bytes, signature_bytes, what="shadow")
        self._check_trusted(wanted, manifest_bytes)  # a revoked version is not run, not even in shadow
        build = self._build_for(manifest)
        slot = self.store.slot_name(manifest.version, manifest_bytes, build.kind)
        try:
            model_path = self._reusable_slot(slot, manifest_bytes)
            if model_path is None:
                model_path = self._fetch_slot(wanted, build, slot, manifest_bytes, signature_bytes)
        except OSError as exc:
            raise Refused(
                f"could not write {self.model} {manifest.version} under {self.store.root}: {exc.strerror or exc}", transient=True
            ) from None
        loaded, key = self._load(manifest, model_path)
        runner = ShadowRunner(self.model, manifest.version, manifest.sha256, loaded, on_disagree=self._shadow_disagreed, timer=self.timer)
        candidate = _Candidate(wanted, SlotRef(slot, manifest.version, manifest.sha256), manifest, key, runner)
        with self._state_lock:
            runner.retarget(self._serving)
            self._candidate = candidate
            self._candidate_refusal = None
        log.info("%s: shadowing %s %s beside the served version", self.device_id, self.model, manifest.version)

    def _drop_candidate(self, forget_refusal: bool = True) -> bool:
        with self._state_lock:
            candidate, self._candidate = self._candidate, None
            refused = self._candidate_refusal is not None and forget_refusal
            if forget_refusal:
                self._candidate_refusal = None
        if candidate is None:
            return refused
        candidate.runner.close()
        self._cache.release(candidate.key)
        log.info("%s: no longer shadowing %s %s", self.device_id, self.model, candidate.ref.version)
        self._clean_quietly()
        return True

    def _shadow_disagreed(
        self,
        token: object,
        feed: dict[str, np.ndarray],
        names: list[str],
        served: list[np.ndarray],
        served_said: Said | None,
        candidate_said: Said | None,
    ) -> None:
        """The shadow runner's hook (its thread): a disagreement, captured when the ring asks for it."""
        candidate = self._candidate
        if not self.capture.wants_disagreement() or candidate is None or not isinstance(token, _Serving):
            return
        self.capture.consider_disagreement(
            token.ref.version,
            token.ref.sha256,
            feed,
            names,
            served,
            served_said.top1 if served_said else None,
            served_said.confidence if served_said else None,
            candidate.ref.version,
            candidate_said.top1 if candidate_said else None,
        )

    @property
    def shadow_runner(self) -> ShadowRunner | None:
        """The candidate being shadowed, if any (tests and benchmarks drain it)."""
        candidate = self._candidate
        return candidate.runner if candidate else None

    def _clean_quietly(self) -> None:
        keep = self._pointer.slots()
        candidate = self._candidate
        if candidate is not None:
            keep.add(candidate.ref.slot)
        try:
            self.store.clean(keep=keep)
        except OSError as exc:
            log.warning("%s: could not remove stale files under %s: %s", self.device_id, self.store.root, exc)

    # -- serving and metrics --------------------------------------------------------------------------
    def predict(self, inputs: dict[str, np.ndarray], label: int | None = None, version: str | None = None) -> Prediction:
        """One request from an application: the current verified version answers (`version`, if given, must be it),
        and the answer is accounted for before it is returned (`run` then `Answer.settle`).

        Raises NotReady (nothing served), VersionNotServed, InvalidInput (names, element types or shapes differ from
        the served version's signature) or InferenceFailed (onnxruntime failed: counted as the version's error).
        `label` is the true class, if the application knows it (live accuracy of a classifier). A shadow candidate,
        if any, gets the same inputs later on its own thread; its answer is never returned."""
        return self.run(inputs, version).settle(label)

    def run(self, inputs: dict[str, np.ndarray], version: str | None = None) -> Answer:
        """The served version's answer to one request, not yet accounted for: the endpoint sends it first and then
        calls `settle`, so the telemetry (NaN check, top-1, the window), the shadow's copy and sample capture stay off
        the application's latency (on a 1000-class output, 0.06-0.12 ms in the server after the model). Raises as
        `predict`; a failed run is counted here."""
        serving = self._serving
        if serving is None:
            raise NotReady(f"model {self.model!r} has no verified version loaded on this device (status {self.status})")
        ref = serving.ref
        if version is not None and version != ref.version:
            raise VersionNotServed(f"model {self.model!r} version {version!r} is not served here; this device serves {ref.version}")
        loaded = serving.loaded
        feed = check_inputs(f"{self.model} {ref.version}", loaded.inputs, inputs)
        start = self.timer()
        try:
            values = loaded.session.run(loaded.output_names, feed)
        except Exception as exc:
            ms = (self.timer() - start) * 1000.0
            with self._metrics_lock:
                serving.totals.failed(int(self.clock() * 1000), int(ms * 1e6))
                if serving is self._serving:
                    self._window.record(ms, True, False, None, None)
            log.debug("%s: inference failed: %s", self.device_id, exc)
            raise InferenceFailed(f"{self.model} {ref.version} failed on this request: {_first_line(exc)}") from None
        ms = (self.timer() - start) * 1000.0
        with self._settling:
            self._unsettled += 1
        return Answer(self, serving, feed, values, ms)

    def _settle(self, answer: Answer, label: int | None, timing: RequestTiming | None, answered: bool) -> Prediction:
        serving, values, ms = answer.serving, answer.values, answer.ms
        loaded, ref = serving.loaded, serving.ref
        try:
            invalid = loaded.has_invalid(values)
            said = read_output(loaded.watch, values)
            infer_ns = int(ms * 1e6)
            with self._metrics_lock:
                if answered:
                    serving.totals.succeeded(int(self.clock() * 1000), infer_ns, *(timing or ()))
                else:
                    serving.totals.failed(int(self.clock() * 1000), infer_ns)
                if serving is self._serving:  # a request that straddled a swap is not the new version's
                    self._window.record(ms, False, invalid, said, label)
            candidate = self._candidate
            if candidate is not None:
                candidate.runner.offer(serving, answer.feed, loaded.output_names, values, said, ms)
            if said is not None and said.confidence is not None and self.capture.on:
                self.capture.consider_request(ref.version, ref.sha256, answer.feed, loaded.output_names, values, said.top1, said.confidence)
        finally:
            with self._settling:
                self._unsettled -= 1
                if not self._unsettled:
                    self._settling.notify_all()
        return Prediction(self.model, ref.version, answer.outputs, ms, invalid)

    def statistics(self) -> list[dict[str, object]]:
        """Triton's $model_stat of the served version (none while nothing is served): counts and durations since it
        began serving in this process."""
        serving = self._serving
        if serving is None:
            return []
        with self._metrics_lock:
            return [serving.totals.document(self.model, serving.ref.version)]

    def infer(self) -> bool:
        """One synthetic request (the manifest's seeded inputs) through predict(); False if nothing is served."""
        serving = self._serving
        if serving is None:
            return False
        feeds = serving.loaded.feeds
        n = self._feed_counter
        self._feed_counter = n + 1
        try:
            self.predict(feeds[n % len(feeds)])
        except NotReady:
            return False
        except (InferenceFailed, RequestError):
            pass  # counted (an inference failure) or not the version's fault (a swap changed its inputs meanwhile)
        return True

    def build_report(self) -> DeviceReport:
        """Snapshots what is served and the metrics since the last report, and starts a new window. An answer already
        sent is in it: the report first waits (at most SETTLE_WAIT_SECONDS) for answers still being accounted for."""
        with self._settling:
            self._settling.wait_for(lambda: not self._unsettled, SETTLE_WAIT_SECONDS)
        with self._state_lock:
            serving, refusal, installing, notice = self._serving, self._refusal, self._installing, self._notice
            candidate, candidate_refusal = self._candidate, self._candidate_refusal
            with self._metrics_lock:
                window, self._window = self._window, Window(serving.loaded.watch if serving else None)
        latency = window.latency_summary()
        predictions = window.predictions()
        labelled = window.labelled_summary()
        shadow = candidate.runner.take() if candidate is not None else None
        captured = self.capture.take()
        stale = self._trust.notice if self._trust is not None else None  # "metadata stale since …": serving goes on
        errors = [e for e in (refusal.reason if refusal else notice or stale, self._deferral) if e]
        if self._capture_problem is not None:
            errors.append(self._capture_problem)
        if candidate_refusal is not None:
            errors.append(f"shadow candidate {self.model} {candidate_refusal.desired.version} refused: {candidate_refusal.reason}")
        return DeviceReport(
            device_id=self.device_id,
            model=self.model,
            version=serving.ref.version if serving else None,
            sha256=serving.ref.sha256 if serving else None,
            status=self._status(serving, refusal, installing),
            error="; ".join(errors) or None,
            failed_version=refusal.desired.version if refusal else None,
            inferences=window.requests,
            errors=window.errors,
            invalid_outputs=window.invalid,
            p99_latency_ms=latency.quantile(0.99),
            agent_version=__version__,
            reported_at=self.clock(),
            p50_latency_ms=latency.quantile(0.5),
            variant=self.store.slot_kind(serving.ref.slot) if serving else None,
            latency=latency.to_json() if latency.n else None,
            predictions=predictions.to_json() if predictions else None,
            shadow=shadow.to_json() if shadow else None,
            labelled=labelled.to_json() if labelled else None,
            captured=captured.captured,
            capture_failed=captured.failed or None,
            update=self._update,
            deferred=deferral_summary(self._held),
        )

    def report(self) -> None:
        self.transport.report(self.build_report())

    # -- the device process ---------------------------------------------------------------------------
    def serve_forever(
        self,
        stop: threading.Event,
        sync_seconds: float = 0.5,
        report_seconds: float = 0.5,
        infer_interval_seconds: float = 0.0,
        synthetic_traffic: bool = False,
    ) -> None:
        """Runs until `stop` is set: one reporting thread, and sync in this thread. Requests come from the
        applications (predict(), the endpoint); `synthetic_traffic=True` (demos and the local fleet's simulated
        devices only) adds a thread that sends synthetic requests, `infer_interval_seconds` apart.

        Reports run on their own thread so a long download shows as "updating" instead of going silent.
        """
        self.start()
        halt = threading.Event()
        threads = [
            threading.Thread(target=self._report_loop, args=(halt, report_seconds), name=f"agent-report-{self.device_id}", daemon=True),
        ]
        if synthetic_traffic:
            threads.append(
                threading.Thread(
                    target=self._inference_loop, args=(halt, infer_interval_seconds), name=f"agent-infer-{self.device_id}", daemon=True
                )
            )
        for t in threads:
            t.start()
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except Exception:
                    log.exception("%s: sync failed unexpectedly; keeping the served model", self.device_id)
                stop.wait(sync_seconds)
        finally:
            halt.set()
            for t in threads:
                t.join()
            self._report_quietly()

    def _inference_loop(self, halt: threading.Event, interval: float) -> None:
        while not halt.is_set():
            if not self.infer():
                halt.wait(0.05)
            elif interval > 0:
                halt.wait(interval)

    def _report_loop(self, halt: threading.Event, every: float) -> None:
        self._report_quietly()
        while not halt.wait(every):
            self._report_quietly()

    def _report_quietly(self) -> None:
        try:
            self.report()
        except Exception as exc:
            log.warning("%s: report failed: %s", self.device_id, exc)

    def close(self) -> None:
        """Releases the sessions and the state directory (call after serve_forever has returned)."""
        with self._sync_lock:
            with self._state_lock:
                old, self._serving = self._serving, None
                candidate, self._candidate = self._candidate, None
            if candidate is not None:
                candidate.runner.close()
                self._cache.release(candidate.key)
            if old is not None:
                self._cache.release(old.key)
            self.store.unlock()
            self._started = False
