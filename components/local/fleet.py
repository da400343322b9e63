"""The local fleet: the stack's devices, run by the real device agent on this machine.

Most devices are simulated in-process: one thread steps each device's `DeviceAgent` (download, verify,
swap, one real inference, report) and writes all reports in one transaction, so 1,000 devices fit on two
cores. Some devices run as separate `edgefleet-agent` processes (`python -m edgefleet_agent`), so faults are real: a killed process
loses its memory and must recover from disk. Offline devices stay dark until `reconnect_after_seconds`.
Simulated agents skip fsync (durable=False) — they are not real devices and thousands of fsyncs would
measure the disk, not the system; agent processes are durable. Simulated devices of one model also share one TUF
client (shared_trust.py), as they share loaded sessions; each agent process keeps its own. One fleet per hub: two would step the same
devices, so a fleet holds an exclusive lock beside the hub database while it runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from components.local.hub import LocalHub
from components.local.traffic import Traffic
from components.rollout.spec import DeviceGroupConfig
from components.stack import PROJECT, StackConfig
from edgefleet_agent.client import ENDPOINT_FILE
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.tuf import ROOT_FILE

# Agent processes get a 20 fps camera stream, as a device would; back to back, three of them would take both cores
# of this machine from the other 997 devices.
FRAME_INTERVAL_SECONDS = 0.05
ENDPOINT_RETRY_SECONDS = 0.2
SWEEP_CHUNK = 500  # simulated devices between a sweep's report flushes and its looks for new desired states


@dataclass(frozen=True)
class LocalDevice:
    id: str
    labels: dict[str, str]
    arch: str
    providers: tuple[str, ...]
    kind: str  # "sim" | "process"
    reconnect_after: float | None  # None: online from the start; inf: never


def local_devices(cfg: StackConfig, source: str = "the stack file") -> list[LocalDevice]:
    """Device ids are `<prefix>-<index>`; the first `processes` of a batch are agent processes, the last `offline` start dark.

    A device's arch and execution providers come from the hardware profile of the device groups that select
    it, the profile that plans, policies and model targets are checked against; a batch that says otherwise
    is a config error rather than a fleet that differs from what was checked."""
    out: list[LocalDevice] = []
    if cfg.local is None:
        return out
    local_groups = [(j, g) for j, g in enumerate(cfg.groups) if cfg.group_platform(g) == "local"]
    by_id: dict[str, list[tuple[int, DeviceGroupConfig]]] = {}
    for j, g in local_groups:
        for dev in g.devices:
            by_id.setdefault(dev, []).append((j, g))
    for i, batch in enumerate(cfg.local.devices):
        by_labels = [(j, g) for j, g in local_groups if g.labels and all(batch.labels.get(k) == v for k, v in g.labels.items())]
        labelled = {j for j, _ in by_labels}
        for n in range(batch.count):
            dev_id = f"{batch.prefix}-{n:04d}"
            arch, providers = _hardware(
                cfg, i, batch, dev_id, by_labels + [m for m in by_id.get(dev_id, ()) if m[0] not in labelled], source
            )
            offline = n >= batch.count - batch.offline
            out.append(
                LocalDevice(
                    id=dev_id,
                    labels=dict(batch.labels),
                    arch=arch,
                    providers=providers,
                    kind="process" if n < batch.processes else "sim",
                    reconnect_after=(batch.reconnect_after_seconds if batch.reconnect_after_seconds is not None else float("inf"))
                    if offline
                    else None,
                )
            )
    return out


def _hardware(
    cfg: StackConfig, i: int, batch, dev_id: str, groups: list[tuple[int, DeviceGroupConfig]], source: str
) -> tuple[str, tuple[str, ...]]:
    if not groups:
        return batch.arch, tuple(batch.execution_providers)  # in no group, so in no ring: nothing was checked against it
    (j, first), *rest = groups
    hw = first.hardware
    for k, other in rest:
        if (other.hardware.arch, other.hardware.execution_providers) != (hw.arch, hw.execution_providers):
            raise ConfigError(
                source,
                f"{PROJECT}:groups[{k}].hardware: device {dev_id} is in groups {first.name!r} and {other.name!r}, "
                f"whose hardware profiles differ ({hw.arch} {hw.execution_providers} vs "
                f"{other.hardware.arch} {other.hardware.execution_providers})",
                "a device has one hardware profile: make the groups' profiles agree, or their labels / device lists disjoint",
            )
    for key, mine, theirs in (
        ("execution_providers", list(batch.execution_providers), list(hw.execution_providers)),
        ("arch", batch.arch, hw.arch),
    ):
        if key in batch.model_fields_set and mine != theirs:
            raise ConfigError(
                source,
                f"{PROJECT}:local.devices[{i}].{key}: {mine} disagrees with {theirs}, the hardware profile of group "
                f"{first.name!r} ({PROJECT}:groups[{j}].hardware.{key}) that selects device {dev_id}",
                f"remove `{key}` from the batch (local devices take their group's hardware profile), or make it match",
            )
    return hw.arch, tuple(hw.execution_providers)


def lock_path(hub_path: Path, purpose: str) -> Path:
    return Path(hub_path).with_name(f"{Path(hub_path).name}.{purpose}.lock")


@contextmanager
def exclusive(path: Path, what: str, fix: str) -> Iterator[None]:
    """An exclusive, non-blocking flock holding the holder's pid: a second holder fails at once, saying who
    holds it, instead of racing on the hub. The kernel drops the lock when the holder dies, even by SIGKILL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by agent processes (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EdgefleetError(str(path), f"{what} (pid {holder} holds this lock)", fix.format(pid=holder)) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_holder(path: Path) -> str | None:
    """The pid holding `path`'s lock, or None when nobody does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


PR_SET_PDEATHSIG = 1


def _libc(name: str):
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True), name)
    except (OSError, AttributeError):
        return None  # malloc_trim is glibc's: musl has none


_PRCTL = _libc("prctl")  # looked up before any fork: the child between fork and exec only calls it
_MALLOC_TRIM = _libc("malloc_trim")


def _die_with_parent(parent: int):
    """A preexec_fn asking Linux to SIGTERM the agent when the fleet's process dies, even by SIGKILL: an orphaned
    agent keeps its state directory locked, and the next fleet's agent for that device could not start. None
    elsewhere (no such signal; agents are stopped by `stop()` only)."""
    if _PRCTL is None:
        return None

    def preexec() -> None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def register(hub: LocalHub, devices: list[LocalDevice]) -> None:
    hub.register_devices((d.id, d.labels, d.arch, list(d.providers), d.kind) for d in devices)


class _Batch:
    """Transport for simulated agents: desired state read for all devices in one query, reports written in one."""

    def __init__(self) -> None:
        self.desired_map: dict[str, DesiredModel | None] = {}
        self.reports: list[DeviceReport] = []

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self.desired_map.get(device_id)

    def report(self, report: DeviceReport) -> None:
        self.reports.append(report)


@contextmanager
def _agent_log(path: Path) -> Iterator[None]:
    """The simulated agents' warnings go to a file beside the process agents' logs, as a device's would: each
    refusal is in its report already, and a thousand lines on the terminal would bury the rollout's progress."""
    logger = logging.getLogger("edgefleet.agent")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        handler.close()


FULL_COLLECTION_SECONDS = 20.0


class _SweepCollections:
    """Cyclic garbage collection at the simulator's pace while a fleet runs in this process, instead of CPython's
    (a young collection every 700 net allocations, in whichever thread crosses the threshold).

    Thousands of simulated devices build and drop reports and telemetry here all the time: at the default threshold a
    collection ran every few milliseconds, found objects still in use (a sweep's reports, a gate's merged telemetry),
    promoted them and rescanned them in the older generations, and a full collection over every device's state landed
    wherever it fell, often in the controller's step (benchmarks/rollout_bench.py `gc_s`, `controller_gc_s`: at 10,000
    devices 2 s of the controller's 5 s, and simulator sweeps of 9 s). So automatic collection is off while the fleet
    runs; the simulator collects the young generations after each sweep and everything every 20 s. Reference
    counting still frees everything acyclic at once; cyclic garbage waits at most one sweep (or 20 s, once old)."""

    def __init__(self) -> None:
        self._enabled = gc.isenabled()
        self._full_at = 0.0

    def __enter__(self) -> "_SweepCollections":
        gc.disable()
        _return_free_heap()  # what the process freed before the fleet (a `model add` evaluating a candidate) is not its
        self._full_at = time.monotonic() + FULL_COLLECTION_SECONDS
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            gc.enable()
        _return_free_heap()

    def after_sweep(self) -> None:
        if time.monotonic() < self._full_at:
            gc.collect(1)
            return
        gc.collect()
        _return_free_heap()
        self._full_at = time.monotonic() + FULL_COLLECTION_SECONDS


def _return_free_heap() -> None:
    """Give the heap the process has freed back to the system (glibc's `malloc_trim`; elsewhere nothing).

    glibc keeps freed memory in its arenas (one per thread it ran on, up to eight per core, and a fleet runs about
    sixty threads) for the next allocation, and returns only the top of each heap. A process that runs fleets one after
    another (the demo, `benchmarks/rollout_bench.py --runs 3`) started each one on the last one's high-water mark: at
    3,000 devices the fleet's peak went 611, 634, 793 MiB PSS in three runs of one process, 587, 615, 624 MiB with this
    after each full collection and when the fleet stops. Also when it starts: a candidate evaluated just before in the
    same process (rollout_bench --slow) left 1.7 GiB of freed heap. The call releases the GIL and took at most 20 ms."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass
class LocalFleet:
    cfg: StackConfig
    hub_path: Path
    state_root: Path
    public_key_pem: bytes
    models: list[str]
    sim_period: float = 0.5
    devices: list[LocalDevice] = field(default_factory=list)
    # the stack's first TUF root and where its metadata is (components/local/trust.py); None: metadata not checked
    trusted_root: bytes | None = None
    metadata_url: str | None = None
    metadata_refresh_seconds: float = 60.0
    traffic: dict[str, Traffic] = field(default_factory=dict)  # per model; a model without it gets synthetic inputs
    captures_root: Path | None = None  # the declared capture store (edgefleet:capture.store); None: devices capture nothing

    def __post_init__(self) -> None:
        self.devices = self.devices or local_devices(self.cfg)
        self._locks = ExitStack()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._apps: list[threading.Thread] = []
        self._procs: dict[tuple[str, str], subprocess.Popen] = {}
        self._spawner: ThreadPoolExecutor | None = None
        self._started_at = 0.0
        self.sweeps = 0
        self.sweep_seconds: list[float] = []
        self.error: BaseException | None = None
        self._collections: _SweepCollections | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._locks.enter_context(
            exclusive(
                lock_path(self.hub_path, "fleet"),
                f"a local fleet is already running on the hub {self.hub_path}",
                "stop it first (Ctrl-C in its terminal, or `kill {pid}`): `edgefleet up` runs its own fleet, "
                "`edgefleet fleet run` is for `pulumi up --stack local`",
            )
        )
        self._started_at = time.time()
        self._stop.clear()
        key_path = self.state_root / "trusted.pub.pem"
        key_path.parent.mkdir(parents=True, exist_ok=True)
        key_path.write_bytes(self.public_key_pem)
        for d in self.devices:
            if d.kind == "process":
                # A previous run's address could name a port another device's agent now listens on.
                (self.state_root / d.id / ENDPOINT_FILE).unlink(missing_ok=True)
        for d in self.devices:
            if d.kind == "process" and d.reconnect_after is None:
                for model in self.models:
                    self.start_process(d.id, model)
        for d in self.devices:
            for model in self.models:
                if d.kind == "process" and model in self.traffic:
                    app = threading.Thread(
                        target=self._application, args=(d.id, self.traffic[model]), name=f"app-{d.id}-{model}", daemon=True
                    )
                    app.start()
                    self._apps.append(app)
        self._locks.enter_context(_agent_log(self.state_root / "simulated-agents.log"))
        self._collections = self._locks.enter_context(_SweepCollections())
        self._thread = threading.Thread(target=self._run_sims, name="edgefleet-sim-fleet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for app in self._apps:
            app.join(timeout=15)
        self._apps = []
        for key in list(self._procs):
            self.stop_process(*key)
        if self._spawner is not None:
            self._spawner.shutdown()
            self._spawner = None
        self._locks.close()

    def __enter__(self) -> "LocalFleet":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def provision_root(self, device_id: str) -> Path | None:
        """The device's first TUF root, beside its trusted key, as a device is provisioned: written once, never replaced
        (a device follows later roots through the chain the repository signs, ngclient's cache keeps them)."""
        if self.trusted_root is None:
            return None
        path = self.state_root / device_id / ROOT_FILE
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.trusted_root)
        return path

    # -- real agent processes ---------------------------------------------------------------------------
    def start_process(self, device_id: str, model: str) -> subprocess.Popen:
        d = next(x for x in self.devices if x.id == device_id)
        root = self.provision_root(device_id)
        log = self.state_root / device_id / f"agent-{model}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "edgefleet_agent",
            "--hub",
            str(self.hub_path),
            "--device-id",
            device_id,
            "--model",
            model,
            "--state-dir",
            str(self.state_root / device_id),
            "--public-key",
            str(self.state_root / "trusted.pub.pem"),
            "--providers",
            ",".join(d.providers),
            "--sync-seconds",
            "0.2",
            "--report-seconds",
            str(self.sim_period),
        ]
        if model not in self.traffic:
            cmd += ["--infer-interval", str(FRAME_INTERVAL_SECONDS)]
        if root is not None and self.metadata_url is not None:
            cmd += ["--trusted-root", str(root), "--metadata-url", self.metadata_url]
            cmd += ["--metadata-refresh-seconds", str(self.metadata_refresh_seconds)]
        if self.captures_root is not None:
            cmd += ["--capture-dir", str(self.captures_root)]
        env = dict(os.environ)
        if self._spawner is None:
            self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgefleet-agent-spawner")
        # Linux sends the parent-death signal when the thread that forked the child ends, not the process: callers
        # include short-lived threads (the demo's fault timer), so one long-lived thread forks every agent.
        proc = self._spawner.submit(self._spawn, cmd, log, env).result()
        self._procs[(device_id, model)] = proc
        return proc

    @staticmethod
    def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent(os.getpid()))

    def kill_process(self, device_id: str, model: str) -> None:
        """SIGKILL: the process gets no chance to clean up, as when a device loses power."""
        proc = self._procs.pop((device_id, model))
        proc.kill()
        proc.wait(timeout=10)

    def stop_process(self, device_id: str, model: str) -> None:
        proc = self._procs.pop((device_id, model), None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def processes(self) -> dict[tuple[str, str], subprocess.Popen]:
        return dict(self._procs)

    def _application(self, device_id: str, traffic: Traffic) -> None:
        """An application on an agent process's device: one request per frame interval to the address the agent wrote
        down, through the agent's own client. A device that is down (not started yet, killed, restarting) is retried
        until it answers; a request it refuses is counted, not retried."""
        from edgefleet_agent.client import InferenceClient, InferenceError

        state_dir = self.state_root / device_id
        client: InferenceClient | None = None
        n = 0
        while not self._stop.is_set():
            if client is None:
                try:
                    client = InferenceClient.from_state_dir(state_dir, timeout=5.0)
                except InferenceError:
                    self._stop.wait(ENDPOINT_RETRY_SECONDS)
                    continue
            inputs, label = traffic.request(device_id, n)
            try:
                client.infer(traffic.model, inputs, label=label)
            except InferenceError as exc:
                if exc.unreachable:
                    client.close()
                    client = None
                    self._stop.wait(ENDPOINT_RETRY_SECONDS)
                    continue
                if exc.status != 503:  # 503: nothing verified loaded yet, as NotReady in-process
                    traffic.count(label, refused=True)
            else:
                traffic.count(label, refused=False)
            n += 1
            self._stop.wait(FRAME_INTERVAL_SECONDS)
        if client is not None:
            client.close()

    # -- simulated devices ------------------------------------------------------------------------------
    def _online(self, d: LocalDevice, now: float) -> bool:
        return d.reconnect_after is None or now - self._started_at >= d.reconnect_after

    def _run_sims(self) -> None:
        try:
            self._sim_loop()
        except BaseException as exc:  # surfaced by the caller through `error`
            self.error = exc

    def _sim_loop(self) -> None:
        """Full sweeps every `sim_period` (sync, the application's request, report for every online device; past
        edgefleet:local.simulated_requests_per_sweep devices they take turns to send a request, each timed by its
        thread's CPU time, and report on their turn or as soon as what they serve changes, as agents that report on
        change and on a period do), and between them a 50 ms check for desired-state changes so a ring's devices react
        at once."""
        import onnxruntime

        from components.local.shared_trust import SharedTrust
        from edgefleet_agent.capture import LocalCaptureSink
        from edgefleet_agent.core import DeviceAgent
        from edgefleet_agent.serving import NotReady, RequestError, SessionCache

        # onnxruntime's own logger writes each failed run to stderr from C++, once per simulated device: a thousand
        # lines over the live display. The agents catch every failure and report it (counted per device, per window).
        onnxruntime.set_default_logger_severity(4)
        hub = LocalHub(self.hub_path)
        cache = SessionCache()
        batch = _Batch()
        sims = [d for d in self.devices if d.kind == "sim"]
        by_id = {d.id: d for d in sims}
        agents: dict[tuple[str, str], DeviceAgent] = {}
        sent: dict[tuple[str, str], int] = {}
        watermarks = {m: 0.0 for m in self.models}
        late_processes = {d.id for d in self.devices if d.kind == "process" and d.reconnect_after is not None}

        shared_trust: dict[str, SharedTrust] = {}  # per model: one TUF client for every simulated device (shared_trust.py)

        def trust_for(d: LocalDevice, model: str) -> SharedTrust | None:
            root = self.provision_root(d.id)
            if root is None or self.metadata_url is None:
                return None
            if model not in shared_trust:
                shared_trust[model] = SharedTrust(
                    root.read_bytes(),
                    self.metadata_url,
                    self.state_root / ".simulated" / model / "tuf",
                    refresh_seconds=self.metadata_refresh_seconds,
                )
            return shared_trust[model]

        def agent_for(d: LocalDevice, model: str) -> DeviceAgent:
            agent = agents.get((d.id, model))
            if agent is None:
                trust = trust_for(d, model)
                agent = DeviceAgent(
                    d.id,
                    model,
                    self.state_root / d.id,
                    self.public_key_pem,
                    batch,
                    execution_providers=d.providers,
                    durable=False,
                    session_cache=cache,
                    trust=trust,
                    capture_sink=LocalCaptureSink(self.captures_root, model, d.id, durable=False) if self.captures_root else None,
                    timer=time.thread_time,
                )
                agent.start()
                agents[(d.id, model)] = agent
            return agent

        def step(d: LocalDevice, model: str, asks: bool, always: bool) -> None:
            """One device's turn: sync, its application's request when `asks`, and a report when it asked, when what it
            serves changed, or `always`."""
            agent = agent_for(d, model)
            moved = agent.sync()
            # a device that starts shadowing a candidate gets its application's next request at once: the shadow summary
            # it then reports is what says it shadows (real applications send all the time; here devices take turns)
            asks = asks or (moved and agent.shadow_runner is not None)
            if asks and model not in self.traffic:
                agent.infer()
            elif asks:
                traffic = self.traffic[model]
                n = sent.get((d.id, model), 0)
                inputs, label = traffic.request(d.id, n)
                try:
                    agent.predict(inputs, label=label)
                except NotReady:
                    pass  # nothing verified loaded: the application has no one to ask yet
                except RequestError:
                    traffic.count(label, refused=True)
                else:
                    traffic.count(label, refused=False)
                sent[(d.id, model)] = n + 1
            if asks or moved or always:
                agent.report()  # on its turn (its window holds its request) and whenever what it serves changed

        per_sweep = self.cfg.local.simulated_requests_per_sweep if self.cfg.local is not None else len(sims) or 1
        next_sweep = 0.0
        while not self._stop.is_set():
            tick = time.time()
            full = tick >= next_sweep
            for model in self.models:
                changed, watermarks[model] = hub.desired_changed_since(model, watermarks[model])
                batch.reports = []
                if full:
                    online = [d for d in sims if self._online(d, tick)]
                    batch.desired_map = hub.desired_for_devices([d.id for d in online], model)
                else:
                    online = [by_id[i] for i in changed if i in by_id and self._online(by_id[i], tick)]
                    batch.desired_map = changed
                every = max(1, -(-len(online) // per_sweep))  # a device sends a request every `every` sweeps
                done: set[str] = set()
                for i, d in enumerate(online):
                    if i and i % SWEEP_CHUNK == 0:
                        # a long sweep flushes what its devices said and takes up desired states set meanwhile: the
                        # devices it already passed react now, the rest in turn, as real devices would, not a sweep later
                        hub.put_reports(batch.reports)
                        batch.reports = []
                        moved_on, watermarks[model] = hub.desired_changed_since(model, watermarks[model])
                        batch.desired_map.update(moved_on)
                        for dev in sorted(done & moved_on.keys()):
                            if self._online(by_id[dev], tick):
                                step(by_id[dev], model, asks=False, always=True)
                    asks = full and (i + self.sweeps) % every == 0
                    step(d, model, asks, always=not full)
                    done.add(d.id)
                if batch.reports:
                    hub.put_reports(batch.reports)
            for dev_id in list(late_processes):
                d = next(x for x in self.devices if x.id == dev_id)
                if self._online(d, tick):
                    late_processes.discard(dev_id)
                    for model in self.models:
                        self.start_process(dev_id, model)
            if full:
                self.sweeps += 1
                if self._collections is not None:
                    self._collections.after_sweep()  # the sweep's own garbage: counted in its time
                self.sweep_seconds.append(time.time() - tick)
                next_sweep = tick + self.sim_period
            self._stop.wait(0.05)
        for agent in agents.values():
            agent.close()
        hub.close()
