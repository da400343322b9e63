"""The agent on AWS IoT Greengrass v2: desired state from the model components' hand-off directory (or, for recipes
before agent 0.4.0, the component's environment), health to CloudWatch.

Contract (docs/aws.md, "The agent on Greengrass"; components/aws/recipes.py is the source of truth):

- One long-lived agent component per stack serves every model of the device on one endpoint (`run --transport
  greengrass` without --model). Each model component's Startup writes its desired state into
  `<state-dir>/_greengrass/models/<model>/` (names in contract/greengrass.py) and waits for the verdict the agent
  writes beside it: `HandoffTransport` reads those directories, `GreengrassSupervisor` runs one DeviceAgent per model
  (like the IoT Edge supervisor) and writes the verdicts. A new desired state is applied in the running process; a
  refused one is answered `status=refused`, and the model component's Startup exits non-zero with the reason, so the
  deployment fails on this device (the gate counts it) and Greengrass rolls it back.
- Before agent 0.4.0 (kept for `--model`): the model component carries the exact signed manifest and its signature as configuration. The agent
  component's recipe sets them, through recipe variables, into the container's environment
  (`EDGEFLEET_MODEL_MANIFEST`, `EDGEFLEET_MODEL_SIGNATURE`, `EDGEFLEET_MODEL_FILE`, `EDGEFLEET_ROLLBACK_ORDER`,
  `EDGEFLEET_ROLLBACK_SIGNATURE`, `EDGEFLEET_ROLLOUT`, `EDGEFLEET_RING`, `EDGEFLEET_METRIC_NAMESPACE`) and
  mounts the artifacts Greengrass downloaded read-only at `--model-dir`. The desired model is therefore
  fixed for the life of the process: a new deployment restarts the component (HARD dependency).
- The recipe passes no version, sha256 or size: they are read from the manifest text itself. That is safe
  because the agent verifies the manifest's signature before it trusts any of it.
- Health goes to CloudWatch (`PutMetricData`): `Inferences`, `Errors`, `InvalidOutputs` (Count) and
  `LatencyP99Ms` (Milliseconds) with dimensions `Rollout`, `Ring`, `Version`, which is exactly what
  `components.aws.hub.AwsHub.metric_queries` reads. A window with errors or invalid outputs also files
  `DeviceErrorRate` / `DeviceInvalidOutputShare` (fractions of the window's inferences) with a fourth dimension,
  `Device` (the thing name), so a failed gate can name the devices behind it (`AwsHub.device_offenders`).
  Healthy windows file none: CloudWatch bills each metric stream, so per-device cost follows misbehaving
  devices only. What the applications' requests showed (the report's predictions, latency, shadow and labelled
  summaries) goes under the same three dimensions, bounded (`quality_datums`; names in contract/greengrass.py). A report
  that names its build files the window's health and quality a second time with a fourth dimension, `Variant` (why both:
  contract/greengrass.py), so the gate judges each build's devices on their own. Credentials come from the token exchange service
  through boto3's container provider (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, `AWS_CONTAINER_AUTHORIZATION_TOKEN`);
  the region from `AWS_REGION`. boto3 is imported and the client built on the first report, never at import.
- The device's status shadow `edgefleet-<model>` (contract/greengrass.py, `StatusShadow`) holds what it serves and its
  status, so `edgefleet status` counts a ring's devices per version through fleet indexing in one call.
- A refused model is not served; the process exits with `EXIT_REFUSED` (see `python -m agent --help`) so
  that the component breaks and the deployment fails on this device: the gate counts job executions, so
  an agent that kept running would be counted as having adopted the version it refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol, Sequence

from edgefleet_agent import __version__
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.greengrass import (
    ARTIFACTS_DIR,
    BIN_DIMENSION,
    CANDIDATE_DIMENSION,
    CLASS_DIMENSION,
    CLASS_METRIC,
    CONFIDENCE_METRIC,
    COUNT_METRICS,
    CURRENT,
    D_FILE,
    D_MANIFEST,
    D_RING,
    D_ROLLBACK_ORDER,
    D_ROLLBACK_SIGNATURE,
    D_ROLLOUT,
    D_SIGNATURE,
    D_WINDOWS,
    DEFER_MESSAGE_LIMIT,
    DEFER_RECHECK_MAX_SECONDS,
    DEFER_RECHECK_MIN_SECONDS,
    DESIRED_FILES,
    DESIRED_PREFIX,
    DEVICE_DIMENSION,
    DEVICE_METRICS,
    DIMENSIONS,
    ENV_FILE,
    ENV_MANIFEST,
    ENV_NAMESPACE,
    ENV_RING,
    ENV_ROLLBACK_ORDER,
    ENV_ROLLBACK_SIGNATURE,
    ENV_ROLLOUT,
    ENV_SIGNATURE,
    HANDOFF_DIR,
    HANDOFF_MODELS,
    LABELLED_METRICS,
    LATENCY_METRIC,
    OPTIONAL_FILES,
    PREDICTIONS_METRIC,
    REMOVAL_GRACE_SECONDS,
    REQUEST_LATENCY_METRIC,
    REQUIRED_ENV,
    SERIAL,
    SHADOW_COUNT_METRICS,
    SHADOW_LATENCY_METRIC,
    SHADOW_SERVED_LATENCY_METRIC,
    STATUS_SHADOW_HEARTBEAT,
    STOPPED,
    VARIANT_DIMENSION,
    VERDICT,
    VERDICT_KEYS,
    VERDICT_PENDING,
    status_shadow,
    status_shadow_document,
)
from edgefleet_agent.contract.manifest import is_valid_name, parse_manifest_bytes
from edgefleet_agent.contract.state import DEFERRED_BY_APPLICATION, DesiredModel, DeviceReport, deferral_summary, outside_window
from edgefleet_agent.contract.telemetry import LATENCY_BOUNDS_MS, Labelled, Latency, Predictions, Shadow
from edgefleet_agent.contract.windows import Windows

if TYPE_CHECKING:
    from types_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDatumTypeDef

    from edgefleet_agent.core import DeviceAgent
    from edgefleet_agent.endpoint import ModelRegistry
    from edgefleet_agent.trust import TrustedMetadata

log = logging.getLogger("edgefleet.agent.greengrass")

EXIT_REFUSED = 3

BACKLOG_DATUMS = 400  # unsent data points kept for the next report (33 to 50 windows with their per-build copies), oldest first out
PUT_BATCH = 1000  # PutMetricData takes at most 1000 metrics (and 1 MB) per request
CLIENT_RETRIES = 3  # botocore "standard" retry mode: attempts per request, with backoff
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 10


class GreengrassConfigError(Exception):
    """The component's environment cannot describe a model: the recipe or the deployment is broken."""


@dataclass(frozen=True)
class GreengrassEnvironment:
    manifest: str
    signature: str
    model_file: str
    rollback_order: str | None
    rollback_signature: str | None
    rollout: str
    ring: str
    namespace: str

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> "GreengrassEnvironment":
        missing = [name for name in REQUIRED_ENV if not environ.get(name, "").strip()]
        if missing:
            raise GreengrassConfigError(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: the agent component's recipe sets them "
                "from the model component's configuration (components/aws/recipes.py, edgefleet_agent/contract/greengrass.py)"
            )
        model_file = environ[ENV_FILE].strip()
        if Path(model_file).name != model_file or model_file in (".", ".."):
            raise GreengrassConfigError(f"{ENV_FILE}={model_file!r} must be a plain file name under --model-dir")
        return cls(
            manifest=environ[ENV_MANIFEST],
            signature=environ[ENV_SIGNATURE],
            model_file=model_file,
            rollback_order=environ.get(ENV_ROLLBACK_ORDER) or None,
            rollback_signature=environ.get(ENV_ROLLBACK_SIGNATURE) or None,
            rollout=environ.get(ENV_ROLLOUT, "").strip(),
            ring=environ.get(ENV_RING, "").strip(),
            namespace=environ.get(ENV_NAMESPACE, "").strip(),
        )


def desired_from_environment(env: GreengrassEnvironment, model: str, model_dir: Path) -> DesiredModel:
    """The DesiredModel the environment describes, with a file:// URI to the artifact Greengrass downloaded.

    version, sha256 and size come from the (still unverified) manifest; DeviceAgent verifies its signature
    and compares these fields with the signed ones before anything is installed. A manifest that does not
    parse still yields a DesiredModel, so the agent refuses it with a reason instead of crashing.
    """
    uri = (Path(model_dir).absolute() / env.model_file).as_uri()
    try:
        m = parse_manifest_bytes(env.manifest.encode("utf-8"), f"{ENV_MANIFEST}")
    except (EdgefleetError, UnicodeEncodeError):
        found = re.search(r"^version:\s*['\"]?([^'\"\s#]+)", env.manifest, re.MULTILINE)
        version, sha256, size = found.group(1) if found else "unknown", "", 0
    else:
        model, version, sha256, size = m.name, m.version, m.sha256, m.size
    return DesiredModel(
        model=model,
        version=version,
        sha256=sha256,
        size=size,
        uri=uri,
        manifest=env.manifest,
        signature=env.signature,
        rollout=env.rollout,
        rollback_order=env.rollback_order,
        rollback_signature=env.rollback_signature,
    )


def bucket_value(i: int) -> float:
    """The value a latency bucket is filed as: its upper bound (the last, open bucket: 1.2 times the last bound), so that
    CloudWatch's percentiles over many devices are the merged histogram's Latency.quantile."""
    return LATENCY_BOUNDS_MS[i] if i < len(LATENCY_BOUNDS_MS) else LATENCY_BOUNDS_MS[-1] * 1.2


class MetricsClient(Protocol):
    """What CloudWatchMetrics calls of boto3's CloudWatch client (tests pass a stand-in)."""

    def put_metric_data(self, *, Namespace: str, MetricData: Sequence[MetricDatumTypeDef]) -> object: ...


class CloudWatchMetrics:
    """Publishes each report window to CloudWatch. Never raises: a failure is logged and the data points are
    kept (at most BACKLOG_DATUMS) for the next report, so a short outage does not hide a bad window."""

    def __init__(self, namespace: str, rollout: str, ring: str, client: MetricsClient | None = None, region: str | None = None) -> None:
        self.namespace = namespace
        self.rollout = rollout
        self.ring = ring
        self.region = region
        self._client = client
        self._backlog: deque[MetricDatumTypeDef] = deque(maxlen=BACKLOG_DATUMS)
        self._lock = threading.Lock()
        self._warned_unconfigured = False

    @property
    def configured(self) -> bool:
        # CloudWatch rejects empty dimension values; a deployment made without edgefleet's merge has none
        return bool(self.namespace and self.rollout and self.ring)

    def client(self) -> MetricsClient:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "cloudwatch",
                region_name=self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
                config=Config(
                    retries={"max_attempts": CLIENT_RETRIES, "mode": "standard"},
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                    user_agent_extra=f"edgefleet-agent/{__version__}",
                ),
            )
        return self._client

    def datums(self, report: DeviceReport) -> list[MetricDatumTypeDef]:
        if report.version is None:
            return []  # nothing served: no version to file the window under
        dims: list[DimensionTypeDef] = [
            {"Name": name, "Value": value} for name, value in zip(DIMENSIONS, (self.rollout, self.ring, report.version), strict=True)
        ]
        at = datetime.fromtimestamp(report.reported_at, timezone.utc)
        out: list[MetricDatumTypeDef] = [
            {"MetricName": name, "Dimensions": dims, "Timestamp": at, "Value": float(getattr(report, field)), "Unit": "Count"}
            for name, field in COUNT_METRICS
        ]
        if report.p99_latency_ms is not None:
            out.append(
                {
                    "MetricName": LATENCY_METRIC,
                    "Dimensions": dims,
                    "Timestamp": at,
                    "Value": float(report.p99_latency_ms),
                    "Unit": "Milliseconds",
                }
            )
        out += self.quality_datums(report, dims, at)
        if report.variant:
            build: list[DimensionTypeDef] = [*dims, {"Name": VARIANT_DIMENSION, "Value": report.variant}]
            out += [{**d, "Dimensions": [*build, *d["Dimensions"][len(dims) :]]} for d in out]
        return out + self.device_datums(report, dims, at)

    @staticmethod
    def quality_datums(report: DeviceReport, dims: list[DimensionTypeDef], at: datetime) -> list[MetricDatumTypeDef]:
        """The window's telemetry as bounded summaries under the ring's dimensions: at most TOP_K + 1 class counts, the
        confidence bins, one latency histogram (values and counts), a shadowed candidate's counts and latencies, and
        labelled counts; counts of zero are not filed. Nothing per device."""
        out: list[MetricDatumTypeDef] = []

        def count(name: str, value: int, extra: list[DimensionTypeDef] | None = None) -> None:
            if value > 0:
                out.append(
                    {"MetricName": name, "Dimensions": [*dims, *(extra or [])], "Timestamp": at, "Value": float(value), "Unit": "Count"}
                )

        def histogram(name: str, latency: Latency, extra: list[DimensionTypeDef] | None = None) -> None:
            pairs = [(bucket_value(i), c) for i, c in enumerate(latency.counts) if c > 0]
            if pairs:
                out.append(
                    {
                        "MetricName": name,
                        "Dimensions": [*dims, *(extra or [])],
                        "Timestamp": at,
                        "Values": [v for v, _ in pairs],
                        "Counts": [float(c) for _, c in pairs],
                        "Unit": "Milliseconds",
                    }
                )

        preds = Predictions.from_json(report.predictions) if report.predictions else None
        if preds is not None and preds.kind == "classes":
            preds = preds.bounded()
            count(PREDICTIONS_METRIC, preds.n)
            for cls, n in sorted(preds.classes.items()):
                count(CLASS_METRIC, n, [{"Name": CLASS_DIMENSION, "Value": cls}])
            for i, n in enumerate(preds.confidence):
                count(CONFIDENCE_METRIC, n, [{"Name": BIN_DIMENSION, "Value": str(i)}])
        if report.latency:
            histogram(REQUEST_LATENCY_METRIC, Latency.from_json(report.latency))
        shadow = Shadow.from_json(report.shadow) if report.shadow else None
        if shadow is not None:
            candidate: list[DimensionTypeDef] = [{"Name": CANDIDATE_DIMENSION, "Value": shadow.version}]
            for name, field in SHADOW_COUNT_METRICS:
                count(name, int(getattr(shadow, field)), candidate)
            histogram(SHADOW_LATENCY_METRIC, shadow.latency, candidate)
            histogram(SHADOW_SERVED_LATENCY_METRIC, shadow.served_latency, candidate)
        labelled = Labelled.from_json(report.labelled) if report.labelled else None
        if labelled is not None:
            for name, field in LABELLED_METRICS:
                count(name, int(getattr(labelled, field)))
        return out

    @staticmethod
    def device_datums(report: DeviceReport, dims: list[DimensionTypeDef], at: datetime) -> list[MetricDatumTypeDef]:
        """This device's own error and invalid-output shares, only for a window that had some: every
        (metric, dimensions) pair is a billed metric, so a healthy device must never create one."""
        if not report.inferences or not report.device_id:
            return []
        device: list[DimensionTypeDef] = [*dims, {"Name": DEVICE_DIMENSION, "Value": report.device_id}]
        return [
            {"MetricName": name, "Dimensions": device, "Timestamp": at, "Value": getattr(report, field) / report.inferences, "Unit": "None"}
            for name, field in DEVICE_METRICS
            if getattr(report, field) > 0
        ]

    def publish(self, report: DeviceReport) -> bool:
        """True if everything pending reached CloudWatch."""
        if not self.configured:
            if not self._warned_unconfigured:
                log.warning(
                    "metrics are not published: %s=%r, %s=%r, %s=%r (the ring's deployment sets them)",
                    ENV_NAMESPACE,
                    self.namespace,
                    ENV_ROLLOUT,
                    self.rollout,
                    ENV_RING,
                    self.ring,
                )
                self._warned_unconfigured = True
            return False
        with self._lock:
            self._backlog.extend(self.datums(report))
            if not self._backlog:
                return True
            try:
                client = self.client()
                while self._backlog:
                    batch = [self._backlog[i] for i in range(min(PUT_BATCH, len(self._backlog)))]
                    client.put_metric_data(Namespace=self.namespace, MetricData=batch)
                    for _ in batch:
                        self._backlog.popleft()
            except Exception as exc:  # noqa: BLE001 - a metrics outage must never stop serving
                log.warning(
                    "CloudWatch metrics not published (%d data points kept for the next report): %s: %s",
                    len(self._backlog),
                    type(exc).__name__,
                    exc,
                )
                return False
        return True

    @property
    def pending(self) -> int:
        return len(self._backlog)


class ShadowClient(Protocol):
    """What StatusShadow calls of boto3's iot-data client (tests pass a stand-in)."""

    def update_thing_shadow(self, *, thingName: str, shadowName: str, payload: bytes) -> object: ...


class StatusShadow:
    """Keeps the device's status shadow (`edgefleet-<model>`, contract/greengrass.py) up to date: what it serves, its
    status, the rollout and ring it was given, and why a deployment waits (`hold`). Written when any of those changes and otherwise at most every
    STATUS_SHADOW_HEARTBEAT seconds, so a fleet costs IoT a few shadow updates an hour, not one a report. The data
    endpoint comes from iot:DescribeEndpoint (iot:Data-ATS) with the token exchange service's credentials. Never raises:
    a failure is logged and the next report tries again. Without the token exchange service's environment (not on
    Greengrass) and without a client it does nothing."""

    def __init__(
        self,
        model: str,
        rollout: str,
        ring: str,
        client: ShadowClient | None = None,
        region: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = status_shadow(model)
        self.rollout = rollout
        self.ring = ring
        self.region = region
        self._client = client
        self._clock = clock
        self._sent: tuple[object, ...] | None = None
        self._sent_at = 0.0
        self.held: str | None = None  # why the nucleus's deployment waits (UpdateDeferrer), for every model of the device
        self._last: DeviceReport | None = None
        self._lock = threading.Lock()  # the supervisor's step (hold) and the agent's reporting thread (publish)

    @property
    def configured(self) -> bool:
        return self._client is not None or bool(os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"))

    def client(self) -> ShadowClient:
        if self._client is None:
            import boto3
            from botocore.config import Config

            region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            config = Config(
                retries={"max_attempts": CLIENT_RETRIES, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
                user_agent_extra=f"edgefleet-agent/{__version__}",
            )
            address = boto3.client("iot", region_name=region, config=config).describe_endpoint(endpointType="iot:Data-ATS")[
                "endpointAddress"
            ]
            self._client = boto3.client("iot-data", region_name=region, endpoint_url=f"https://{address}", config=config)
        return self._client

    def publish(self, report: DeviceReport) -> bool:
        """True if the shadow holds this report's state (sent now, or unchanged and fresh)."""
        if not self.configured:
            return False
        with self._lock:
            self._last = report
            deferred = report.deferred or self.held
            state = (report.version, report.sha256, str(report.status), self.rollout, self.ring, deferred)
            now = self._clock()
            if state == self._sent and now - self._sent_at < STATUS_SHADOW_HEARTBEAT:
                return True
            doc = status_shadow_document(report.version, report.sha256, str(report.status), self.rollout, self.ring, now, deferred)
            try:
                self.client().update_thing_shadow(thingName=report.device_id, shadowName=self.name, payload=json.dumps(doc).encode())
            except Exception as exc:  # noqa: BLE001 - a shadow outage must never stop serving
                log.warning("status shadow %s not updated: %s: %s", self.name, type(exc).__name__, exc)
                return False
            self._sent, self._sent_at = state, now
            return True

    def hold(self, reason: str | None) -> None:
        """Why the device's pending deployment waits now (None: nothing waits). A change is written at once with the last
        report's state, rather than at the next report (a minute later), so `edgefleet status` sees a window close."""
        held = deferral_summary(reason)
        if held == self.held:
            return
        self.held = held
        last = self._last
        if last is not None:
            self.publish(last)


class GreengrassTransport:
    """Transport for `python -m agent --transport greengrass`. The desired state never changes in-process."""

    def __init__(
        self,
        model: str,
        model_dir: Path,
        environ: Mapping[str, str] | None = None,
        cloudwatch_client: MetricsClient | None = None,
        shadow_client: ShadowClient | None = None,
    ) -> None:
        self.env = GreengrassEnvironment.from_environ(os.environ if environ is None else environ)
        self.model_dir = Path(model_dir)
        self._desired = desired_from_environment(self.env, model, self.model_dir)
        self.metrics = CloudWatchMetrics(self.env.namespace, self.env.rollout, self.env.ring, client=cloudwatch_client)
        self.shadow = StatusShadow(model, self.env.rollout, self.env.ring, client=shadow_client)

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self._desired

    def report(self, report: DeviceReport) -> None:
        self.metrics.publish(report)
        self.shadow.publish(report)

    def close(self) -> None:
        pass


# -- one agent per device: the model components' hand-off directory (agent 0.4.0) ----------------------------------
class HandoffError(Exception):
    """A model's hand-off directory does not hold a complete desired state (yet)."""


@dataclass(frozen=True)
class Handoff:
    """One committed desired state from a model component: its serial (echoed in the verdict) and what it asks for."""

    serial: str
    desired: DesiredModel
    ring: str
    windows: str = ""  # the ring's group's maintenance windows document (contract/windows.py), "" for none


def handoff_root(state_dir: Path) -> Path:
    return Path(state_dir) / HANDOFF_DIR / HANDOFF_MODELS


def read_handoff(model_dir: Path, model: str) -> Handoff | None:
    """The desired state `model_dir/current` names, None before any model component committed one. The files hold the
    exact bytes the model component's configuration carried (read as bytes: no newline translation)."""
    try:
        current = (model_dir / CURRENT).read_bytes().decode("utf-8").strip()
    except FileNotFoundError:
        return None
    if not current.startswith(DESIRED_PREFIX) or Path(current).name != current:
        raise HandoffError(f"{model_dir / CURRENT} names {current!r}, not a {DESIRED_PREFIX}<serial> directory")
    d = model_dir / current
    values = {name: (d / name).read_bytes().decode("utf-8") for name in (*DESIRED_FILES, SERIAL) if name not in OPTIONAL_FILES}
    for name in OPTIONAL_FILES:
        try:
            values[name] = (d / name).read_bytes().decode("utf-8")
        except FileNotFoundError:
            values[name] = ""
    environ = {
        ENV_MANIFEST: values[D_MANIFEST],
        ENV_SIGNATURE: values[D_SIGNATURE],
        ENV_FILE: values[D_FILE],
        ENV_ROLLBACK_ORDER: values[D_ROLLBACK_ORDER],
        ENV_ROLLBACK_SIGNATURE: values[D_ROLLBACK_SIGNATURE],
        ENV_ROLLOUT: values[D_ROLLOUT],
        ENV_RING: values[D_RING],
    }
    try:
        env = GreengrassEnvironment.from_environ(environ)
    except GreengrassConfigError as exc:
        raise HandoffError(f"{d}: {exc}") from None
    return Handoff(
        serial=values[SERIAL].strip(),
        desired=desired_from_environment(env, model, model_dir / ARTIFACTS_DIR),
        ring=env.ring,
        windows=values[D_WINDOWS].strip(),
    )


class HandoffTransport:
    """Desired state for every model whose component committed one under `<state-dir>/_greengrass/models/`, and
    reports to CloudWatch under each model's own rollout and ring. `refresh()` re-reads the directory; a model whose
    component left a `stopped` marker for `grace_seconds` of this process's own observation is no longer desired
    (a restart or an update removes the marker within seconds; a removed component never does)."""

    def __init__(
        self,
        state_dir: Path,
        namespace: str,
        cloudwatch_client: MetricsClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        grace_seconds: float = REMOVAL_GRACE_SECONDS,
        shadow_client: ShadowClient | None = None,
    ) -> None:
        self.root = handoff_root(state_dir)
        self.namespace = namespace
        self.grace_seconds = grace_seconds
        self._client = cloudwatch_client
        self._shadow_client = shadow_client
        self.shadows: dict[str, StatusShadow] = {}  # per model: what `edgefleet status` counts through fleet indexing
        self._held: str | None = None
        self._clock = clock
        self._lock = threading.Lock()
        self._handoffs: dict[str, Handoff] = {}
        self._stopped_since: dict[str, float] = {}
        self._problems: dict[str, str] = {}
        self.metrics: dict[str, CloudWatchMetrics] = {}

    def refresh(self) -> set[str]:
        """Reads every model's committed desired state; returns the models wanted now. A directory that cannot be read
        keeps the last desired state read from it (a model component may be mid-way through committing a new one)."""
        found: dict[str, Handoff] = {}
        try:
            entries = sorted(p for p in self.root.iterdir() if p.is_dir() and is_valid_name(p.name))
        except FileNotFoundError:
            entries = []
        now = self._clock()
        for model_dir in entries:
            name = model_dir.name
            if (model_dir / STOPPED).exists():
                since = self._stopped_since.setdefault(name, now)
                if now - since >= self.grace_seconds:
                    if name in self._handoffs:
                        log.info("%s: its model component has been stopped for %.0f s: no longer desired", name, now - since)
                    continue
            else:
                self._stopped_since.pop(name, None)
            try:
                handoff = read_handoff(model_dir, name)
            except (OSError, UnicodeDecodeError, HandoffError) as exc:
                if self._problems.get(name) != str(exc):
                    log.warning("%s: cannot read the desired state from %s (keeping the last one): %s", name, model_dir, exc)
                    self._problems[name] = str(exc)
                handoff = self._handoffs.get(name)
            else:
                self._problems.pop(name, None)
            if handoff is not None:
                found[name] = handoff
        with self._lock:
            self._handoffs = found
        return set(found)

    def handoff(self, model: str) -> Handoff | None:
        with self._lock:
            return self._handoffs.get(model)

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        handoff = self.handoff(model)
        return handoff.desired if handoff is not None else None

    def report(self, report: DeviceReport) -> None:
        handoff = self.handoff(report.model)
        metrics = self.metrics.get(report.model)
        if metrics is None:
            metrics = self.metrics[report.model] = CloudWatchMetrics(self.namespace, "", "", client=self._client)
        shadow = self.shadows.get(report.model)
        if shadow is None:
            shadow = self.shadows[report.model] = StatusShadow(report.model, "", "", client=self._shadow_client)
            shadow.held = deferral_summary(self._held)
        if handoff is not None:  # dimensions follow the model's current deployment; a removed model keeps its last
            metrics.rollout, metrics.ring = handoff.desired.rollout, handoff.ring
            shadow.rollout, shadow.ring = handoff.desired.rollout, handoff.ring
        metrics.publish(report)
        shadow.publish(report)

    def hold(self, reason: str | None) -> None:
        """Why the nucleus's pending deployment waits (UpdateDeferrer.held), into every model's status shadow: the
        nucleus holds a deployment whole, and which models it changes is not known before it is applied."""
        self._held = reason
        for shadow in list(self.shadows.values()):
            shadow.hold(reason)

    def write_verdict(self, model: str, verdict: Mapping[str, str]) -> bool:
        """<model>/verdict, replaced atomically, as key=value lines (one line each: the model component reads it with sed)."""
        model_dir = self.root / model
        text = "".join(f"{k}={' '.join(str(verdict.get(k, '')).split())}\n" for k in VERDICT_KEYS)
        tmp = model_dir / f".{VERDICT}.tmp"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, model_dir / VERDICT)
        except OSError as exc:
            log.warning("%s: cannot write the verdict in %s: %s", model, model_dir, exc)
            return False
        return True

    def close(self) -> None:
        pass


# -- deferring deployments: maintenance windows and applications' deferrals, through Greengrass IPC --------------------
class ComponentUpdateIPC(Protocol):
    """What UpdateDeferrer calls of awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2 (awsiotsdk; tests pass a
    stand-in with the same keyword signatures). Events are model.ComponentUpdatePolicyEvents: `pre_update_event`
    (model.PreComponentUpdateEvent: `deployment_id`, `is_ggc_restarting`) or `post_update_event` (`deployment_id`)."""

    def subscribe_to_component_updates(
        self,
        *,
        on_stream_event: Callable[[object], None] | None = None,
        on_stream_error: Callable[[Exception], bool] | None = None,
        on_stream_closed: Callable[[], None] | None = None,
    ) -> tuple[object, object]: ...

    def defer_component_update(
        self, *, deployment_id: str | None = None, message: str | None = None, recheck_after_ms: int | None = None
    ) -> object: ...


@dataclass(frozen=True)
class Hold:
    """Why a deployment must wait now, and for how long before the nucleus asks again."""

    seconds: float
    reason: str
    held: str = ""  # the status shadow's `deferred`: the cause without times, alike on every device it holds


def window_hold(documents: Iterable[str], now: float) -> Hold | None:
    """The hold the device's maintenance windows put on a deployment at `now`: None while every window set the device's
    models were given is open (or none was given). Windows that do not parse hold it too: a device never guesses at
    when it may swap. The wait is until the next window opens, looked at again at least every DEFER_RECHECK_MAX_SECONDS."""
    closed: list[tuple[float, str, str]] = []  # (wait, reason, the shadow's deferred)
    for text in sorted(set(documents)):
        try:
            windows = Windows.from_document(text)
        except ValueError as exc:
            closed.append((DEFER_RECHECK_MAX_SECONDS, str(exc), str(exc)))
            continue
        if windows is None or windows.open_until(now) is not None:
            continue
        described = windows.describe()
        held = outside_window(described)
        opens = windows.next_open(now)
        if opens is None:
            closed.append((DEFER_RECHECK_MAX_SECONDS, f"no maintenance window of {described} opens within a year", held))
        else:
            when = datetime.fromtimestamp(opens, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            closed.append((opens - now, f"{held}: the next opens {when}", held))
    if not closed:
        return None
    wait = max(w for w, _, _ in closed)  # every window set must be open at once
    seconds = min(max(wait, DEFER_RECHECK_MIN_SECONDS), DEFER_RECHECK_MAX_SECONDS)
    return Hold(seconds, "; ".join(r for _, r, _ in closed), "; ".join(h for _, _, h in closed))


class UpdateDeferrer:
    """Answers every PreComponentUpdateEvent the nucleus sends (componentUpdatePolicy NOTIFY_COMPONENTS) with
    DeferComponentUpdate: recheck_after_ms=0 to let the deployment go ahead, or the hold's wait with its reason as the
    message, after which the nucleus asks again. `hold(deployment_id, now)` decides. Never raises into the SDK's
    threads; a closed stream is subscribed again by `ensure_subscribed` (the supervisor calls it every step)."""

    def __init__(self, ipc: ComponentUpdateIPC, hold: Callable[[str, float], Hold | None], clock: Callable[[], float] = time.time) -> None:
        self.ipc = ipc
        self.hold = hold
        self.clock = clock
        self.subscribed = False
        self.answers: list[tuple[str, int, str]] = []  # (deployment id, recheck_after_ms, message), the last few
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._held: str | None = None

    @classmethod
    def from_greengrass_environment(cls, hold: Callable[[str, float], Hold | None]) -> "UpdateDeferrer":
        """Connects to the nucleus's IPC socket (AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT and SVCUID, which the
        agent component's recipe passes into its container). Raises ImportError without awsiotsdk, KeyError or OSError
        outside a Greengrass component."""
        try:
            from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
        except ImportError as exc:
            raise ImportError(f"awsiotsdk is not installed ({exc}); install edgefleet-agent[greengrass]") from None
        return cls(GreengrassCoreIPCClientV2(), hold)

    def ensure_subscribed(self) -> bool:
        if self.subscribed:
            return True
        try:
            self.ipc.subscribe_to_component_updates(
                on_stream_event=self.on_event, on_stream_error=self._on_error, on_stream_closed=self._on_closed
            )
        except Exception as exc:  # noqa: BLE001 - retried at the next step; serving goes on
            log.warning("cannot subscribe to component updates (deployments are not deferred until it works): %s", exc)
            return False
        self.subscribed = True
        log.info("subscribed to component updates: deployments wait for maintenance windows and applications' deferrals")
        return True

    def on_event(self, event: object) -> None:
        pre = getattr(event, "pre_update_event", None)
        if pre is None:
            post = getattr(event, "post_update_event", None)
            if post is not None:
                log.info("deployment %s applied", getattr(post, "deployment_id", "?"))
                with self._lock:
                    self._reason = self._held = None  # applied: nothing waits (a later one is asked about afresh)
            return
        deployment_id = str(getattr(pre, "deployment_id", None) or "")
        try:
            held = self.hold(deployment_id, self.clock())
        except Exception:  # noqa: BLE001 - an answer is owed; without one the nucleus goes ahead after its timeout anyway
            log.exception("deployment %s: cannot tell whether it must wait; letting it go ahead", deployment_id)
            held = None
        ms = 0 if held is None else int(held.seconds * 1000)
        message = "edgefleet-agent: ready" if held is None else f"edgefleet-agent: {held.reason}"[:DEFER_MESSAGE_LIMIT]
        try:
            self.ipc.defer_component_update(deployment_id=deployment_id, message=message, recheck_after_ms=ms)
        except Exception as exc:  # noqa: BLE001 - the nucleus goes ahead after the policy's timeout
            log.warning("deployment %s: DeferComponentUpdate failed: %s", deployment_id, exc)
            return
        with self._lock:
            self.answers = [*self.answers[-19:], (deployment_id, ms, message)]
            reason = held.reason if held is not None else None
            changed, self._reason = reason != self._reason, reason
            self._held = (held.held or held.reason) if held is not None else None
        if held is not None and changed:
            log.info("deployment %s deferred %.0f s: %s", deployment_id, held.seconds, held.reason)
        elif held is None and changed:
            log.info("deployment %s may go ahead", deployment_id)

    @property
    def pending_reason(self) -> str | None:
        """Why the last deployment the nucleus asked about is waiting, None when it was let go ahead."""
        with self._lock:
            return self._reason

    @property
    def held(self) -> str | None:
        """pending_reason as the status shadow's `deferred`: the cause without times, alike on every device it holds."""
        with self._lock:
            return self._held

    def _on_error(self, error: Exception) -> bool:
        log.warning("component update stream error: %s", error)
        return False  # keep the stream open

    def _on_closed(self) -> None:
        log.warning("component update stream closed: subscribing again")
        self.subscribed = False


@dataclass
class _Agent:
    agent: DeviceAgent
    stop: threading.Event
    thread: threading.Thread | None
    verdict: str = ""  # the last verdict written, so an unchanged one is not rewritten every step


class GreengrassSupervisor:
    """One DeviceAgent per model found in the hand-off directory, all in this process and on one endpoint
    (`registry`): a model whose component commits a new desired state is swapped in place; one that appears gets an
    agent; one whose component is gone is unloaded. After every step each model's verdict is written for the serial
    of its committed desired state, which is what the model component's Startup waits for."""

    def __init__(
        self,
        transport: HandoffTransport,
        device_id: str,
        state_dir: Path,
        public_key_pem: bytes,
        *,
        providers: Iterable[str] = ("CPUExecutionProvider",),
        sync_seconds: float = 0.5,
        report_seconds: float = 60.0,
        infer_interval: float = 0.0,
        synthetic_traffic: bool = False,
        registry: ModelRegistry | None = None,
        threaded: bool = True,
        trust_for: Callable[[str], TrustedMetadata | None] | None = None,
        deferrer: Callable[[Callable[[str, float], Hold | None]], UpdateDeferrer] | None = None,
    ) -> None:
        """`deferrer` builds the UpdateDeferrer that answers the nucleus's update notifications with `update_hold`
        (UpdateDeferrer.from_greengrass_environment on a device; None: deployments are never deferred)."""
        from edgefleet_agent.serving import SessionCache

        self.transport = transport
        self.device_id = device_id
        self.state_dir = Path(state_dir)
        self.public_key_pem = public_key_pem
        self.providers = list(providers)
        self.sync_seconds = sync_seconds
        self.report_seconds = report_seconds
        self.infer_interval = infer_interval
        self.synthetic_traffic = synthetic_traffic
        self.registry = registry
        self.threaded = threaded
        self.trust_for = trust_for
        self.cache = SessionCache()
        self.agents: dict[str, _Agent] = {}
        self._start_problems: dict[str, str] = {}
        self._deferred_since: dict[str, float] = {}  # deployment id -> when an application's deferral first held it
        self.deferrer: UpdateDeferrer | None = None
        if deferrer is not None:
            try:
                self.deferrer = deferrer(self.update_hold)
            except Exception as exc:  # noqa: BLE001 - serving goes on; the nucleus then applies deployments at once
                log.warning(
                    "%s: no Greengrass IPC (%s): deployments are applied without waiting for maintenance windows or "
                    "applications' deferrals",
                    device_id,
                    exc,
                )

    def update_hold(self, deployment_id: str, now: float) -> Hold | None:
        """Whether the deployment the nucleus is about to apply must wait: while an application defers a swap (at most
        MAX_DEFER_SECONDS from the first time it held this deployment), or while the device's maintenance windows are
        closed. Only forward deployments ask: rollbacks are created with SKIP_NOTIFY_COMPONENTS."""
        from edgefleet_agent.core import MAX_DEFER_SECONDS

        running = self.agents.copy()  # (this runs on the SDK's thread; dict.copy is one step under the GIL)
        agents = list(running.values())
        deferred = [u for a in agents if (u := a.agent.deferred_until()) is not None]
        if deferred:
            if deployment_id not in self._deferred_since and len(self._deferred_since) >= 64:
                self._deferred_since.pop(next(iter(self._deferred_since)))  # oldest first: a dict keeps insertion order
            first = self._deferred_since.setdefault(deployment_id, now)
            limit = min(max(a.agent.max_defer_seconds for a in agents), MAX_DEFER_SECONDS)
            until = min(max(deferred), first + limit)
            if until > now:
                when = datetime.fromtimestamp(until, timezone.utc).strftime("%H:%M:%S UTC")
                return Hold(max(until - now, DEFER_RECHECK_MIN_SECONDS), f"{DEFERRED_BY_APPLICATION} until {when}", DEFERRED_BY_APPLICATION)
        documents = []
        for name in running:
            handoff = self.transport.handoff(name)
            if handoff is not None and handoff.windows:
                documents.append(handoff.windows)
        return window_hold(documents, now)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - supervision goes on; the agents keep serving
                log.exception("%s: supervision step failed", self.device_id)
            stop.wait(self.sync_seconds)

    def step(self) -> None:
        if self.deferrer is not None:
            self.deferrer.ensure_subscribed()
            self.transport.hold(self.deferrer.held)
        wanted = self.transport.refresh()
        for name in sorted(set(self.agents) - wanted):
            self._stop(name, unload=True)
        for name in sorted(wanted - set(self.agents)):
            self._start(name)
        for name, running in self.agents.items():
            if not self.threaded:
                running.agent.sync()
            self._verdict(name, running)

    def _verdict(self, name: str, running: _Agent) -> None:
        handoff = self.transport.handoff(name)
        if handoff is None:
            return
        status, reason = running.agent.outcome(handoff.desired)
        verdict = {
            "serial": handoff.serial,
            "model": name,
            "version": handoff.desired.version,
            "status": status,
            "serving": running.agent.current_version or "",
            "reason": reason,
        }
        key = repr(sorted(verdict.items()))
        if key == running.verdict:
            return
        if status != VERDICT_PENDING:
            log.info("%s: %s %s %s%s", self.device_id, name, handoff.desired.version, status, f": {reason}" if reason else "")
        if self.transport.write_verdict(name, verdict):
            running.verdict = key

    def _start(self, name: str) -> None:
        from edgefleet_agent.core import DeviceAgent
        from edgefleet_agent.store import StoreError

        agent = None
        try:
            agent = DeviceAgent(
                self.device_id,
                name,
                self.state_dir,
                self.public_key_pem,
                self.transport,
                execution_providers=self.providers,
                session_cache=self.cache,
                trust=self.trust_for(name) if self.trust_for is not None else None,
            )
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
        self.agents[name] = _Agent(agent, stop, thread)
        log.info("%s: agent for %s started", self.device_id, name)

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
                running.agent.sync()  # no longer desired: record the unload on disk
            running.agent.report()
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: final report for %s failed: %s", self.device_id, name, exc)
        finally:
            running.agent.close()
        log.info("%s: agent for %s stopped", self.device_id, name)

    def close(self) -> None:
        for name in list(self.agents):
            self._stop(name, unload=False)
