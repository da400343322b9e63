"""The AWS IoT Greengrass v2 wire format: what the agent component's container receives and what it files.

In (since agent 0.4.0): one long-lived agent component per stack serves every model of the device. Each model
component's lifecycle hands its desired state to it through a directory in the agent component's work directory
(HANDOFF_DIR, `/state/_greengrass` in the container): `models/<model>/`, created by the model component, holds
`artifacts/<sha256>.onnx`, one `d-<serial>/` directory per desired state (DESIRED_FILES: the exact signed manifest
bytes, the signature, the artifact's file name, rollout, ring, rollback order and signature, the serial) and CURRENT,
the name of the committed `d-<serial>/` (written to a temporary name, then renamed). The agent writes VERDICT there
(key=value lines, VERDICT_KEYS) after each sync; the model component's Startup waits for the verdict carrying its
serial. STOPPED, written by the model component's Shutdown and removed by its Startup, marks a model whose component
may be gone: the agent unloads it after seeing the marker for REMOVAL_GRACE_SECONDS.
In (agents before 0.4.0, still read with `--model`): the agent component's recipe set these environment variables
from the model component's configuration keys, through recipe variables the nucleus interpolates at deployment time.
Out: CloudWatch metrics under the stack's namespace, dimensioned by rollout, ring and version, which the ring's
gate reads (components/aws/hub.py). Both sides import the names from here.

What the applications' traffic showed (contract/telemetry.py) travels as the same bounded summaries, per rollout, ring
and version, never per device: the count of classified requests and, with a `Class` dimension, the top-1 class
counts of the window's top-K classes plus "other" (a ring's metric streams grow with the model's classes, never with
its devices); top-1 confidence counts with a `Bin` dimension (CONFIDENCE_BINS streams); every request's latency as one
metric of values and counts (bucket bounds and their counts, so CloudWatch's percentiles over a ring are the merged
histogram's); a shadowed candidate's compared / agreeing / failed / NaN requests and both models' latencies with a
`Candidate` dimension (the candidate's version); labelled requests and how many were right.

Per build (agent 0.4.0): a report that names the build it serves (fp32, int8, fp16) files its window's health and
quality metrics twice, under the ring's dimensions as before and with a fourth, `Variant`, so that the gate judges each
build's devices on their own. In CloudWatch a metric with another dimension is another metric: filing both keeps every
ring-wide read (the gate's, the stack's alarms and dashboards, hubs and agents of either age) exactly as it was, and
reads of one build are plain MetricStat queries of known dimensions, which see a new metric at once (SEARCH and
ListMetrics take minutes to see one, and SEARCH cannot merge percentiles). The cost is bounded: each device files one
copy, so a ring's streams per version grow by the builds its devices serve (at most three; one for a version of a
single build, which the gate does not read, since the agent files what it serves without knowing the others), never
by devices; the per-device offender metrics carry no build.
"""

from __future__ import annotations

# environment variable -> the model component's configuration key it is set from (None: the agent component's own)
ENV_MANIFEST = "EDGEFLEET_MODEL_MANIFEST"
ENV_SIGNATURE = "EDGEFLEET_MODEL_SIGNATURE"
ENV_FILE = "EDGEFLEET_MODEL_FILE"
ENV_ROLLBACK_ORDER = "EDGEFLEET_ROLLBACK_ORDER"
ENV_ROLLBACK_SIGNATURE = "EDGEFLEET_ROLLBACK_SIGNATURE"
ENV_ROLLOUT = "EDGEFLEET_ROLLOUT"
ENV_RING = "EDGEFLEET_RING"
ENV_NAMESPACE = "EDGEFLEET_METRIC_NAMESPACE"
ENV_TRUSTED_KEY = "EDGEFLEET_TRUSTED_KEY_PEM"
REQUIRED_ENV = (ENV_MANIFEST, ENV_SIGNATURE, ENV_FILE)

MODEL_CONFIGURATION = {
    ENV_MANIFEST: "Manifest",
    ENV_SIGNATURE: "Signature",
    ENV_FILE: "File",
    ENV_ROLLBACK_ORDER: "RollbackOrder",
    ENV_ROLLBACK_SIGNATURE: "RollbackSignature",
    ENV_ROLLOUT: "Rollout",
    ENV_RING: "Ring",
}
AGENT_CONFIGURATION = {ENV_NAMESPACE: "MetricNamespace", ENV_TRUSTED_KEY: "TrustedKeyPem"}

# The hand-off directory between the model components and the agent (relative to the agent component's work directory,
# mounted at the agent's --state-dir). "_" keeps it apart from the agent's own per-model directories: model names never
# hold one (contract/manifest.py NAME_RE).
HANDOFF_DIR = "_greengrass"
HANDOFF_MODELS = "models"  # HANDOFF_DIR/models/<model>/
ARTIFACTS_DIR = "artifacts"  # <model>/artifacts/<sha256>.onnx, copied from the model component's own artifacts
DESIRED_PREFIX = "d-"  # <model>/d-<serial>/: one desired state, complete before CURRENT names it
CURRENT = "current"  # <model>/current: the committed d-<serial> directory's name (one line)
STOPPED = "stopped"  # <model>/stopped: the model component was stopped (Shutdown); Startup removes it
VERDICT = "verdict"  # <model>/verdict: the agent's answer to the committed desired state (VERDICT_KEYS)

# Maintenance windows and application deferral (docs/aws.md, "Maintenance windows"). A forward ring deployment is
# created with componentUpdatePolicy NOTIFY_COMPONENTS and merges the group's windows into the model component's
# configuration (WINDOWS_KEY; the model component hands them over as D_WINDOWS). The agent component subscribes to
# component updates over Greengrass IPC (SubscribeToComponentUpdates) and answers each PreComponentUpdateEvent with
# DeferComponentUpdate: recheckAfterMs 0 (go ahead) while every window the device's models were given is open and no
# application holds a swap back, else the time until that changes (at most DEFER_RECHECK_MAX_SECONDS, so the nucleus
# asks again) and the reason as its message. An application's deferral holds one deployment at most the agent's
# MAX_DEFER_SECONDS from the first time it was deferred for it. Rollback (and removal) deployments are created with
# SKIP_NOTIFY_COMPONENTS: no component is asked, so nothing on the device can hold them back.
WINDOWS_KEY = "MaintenanceWindows"
NOTIFY_COMPONENTS, SKIP_NOTIFY_COMPONENTS = "NOTIFY_COMPONENTS", "SKIP_NOTIFY_COMPONENTS"
DEFER_RECHECK_MAX_SECONDS = 3600.0
DEFER_RECHECK_MIN_SECONDS = 1.0  # a deferral of 0 ms would be read by the nucleus as "go ahead"
DEFER_MESSAGE_LIMIT = 256  # the message the nucleus logs beside the deferral

# files in d-<serial>/, each written from the model component's configuration key (SERIAL: generated by its Startup)
D_MANIFEST, D_SIGNATURE, D_FILE = "manifest.yaml", "manifest.yaml.sig", "file"
D_ROLLOUT, D_RING, D_ROLLBACK_ORDER, D_ROLLBACK_SIGNATURE = "rollout", "ring", "rollback-order", "rollback-signature"
D_WINDOWS = "maintenance-windows"  # the ring's group's windows document (contract/windows.py), "" for none; absent before
DESIRED_FILES = {
    D_MANIFEST: "Manifest",
    D_SIGNATURE: "Signature",
    D_FILE: "File",
    D_ROLLOUT: "Rollout",
    D_RING: "Ring",
    D_ROLLBACK_ORDER: "RollbackOrder",
    D_ROLLBACK_SIGNATURE: "RollbackSignature",
    D_WINDOWS: WINDOWS_KEY,
}
OPTIONAL_FILES = (D_WINDOWS,)  # model components published before windows write none: read as ""
SERIAL = "serial"
VERDICT_KEYS = ("serial", "model", "version", "status", "serving", "reason")
VERDICT_INSTALLED, VERDICT_REFUSED, VERDICT_PENDING = "installed", "refused", "pending"
REMOVAL_GRACE_SECONDS = 300.0  # a stopped marker the agent has seen this long: the model component is gone
ROLLOUT_ID_KEY = "RolloutId"  # merged beside Rollout and Ring; echoed by nobody, read by the gate's deployments


# CloudWatch: a window's counts and latency per (rollout, ring, version), and per device only for a bad window
DIMENSIONS = ("Rollout", "Ring", "Version")
VARIANT_DIMENSION = "Variant"  # the build served, on the per-build copy of a window's health and quality metrics
DEVICE_DIMENSION = "Device"
COUNT_METRICS = (("Inferences", "inferences"), ("Errors", "errors"), ("InvalidOutputs", "invalid_outputs"))
LATENCY_METRIC = "LatencyP99Ms"
DEVICE_METRICS = (("DeviceErrorRate", "errors"), ("DeviceInvalidOutputShare", "invalid_outputs"))  # share of the window's inferences

# Quality: bounded summaries of the window's requests (contract/telemetry.py), per (rollout, ring, version)
CLASS_DIMENSION = "Class"  # a class index as text, or telemetry.OTHER
BIN_DIMENSION = "Bin"  # a confidence bin, "0" .. CONFIDENCE_BINS - 1
CANDIDATE_DIMENSION = "Candidate"  # the shadowed candidate's version
PREDICTIONS_METRIC = "Predictions"  # classified requests (Count)
CLASS_METRIC = "PredictedClass"  # top-1 class counts (Count), dimension Class
CONFIDENCE_METRIC = "Top1Confidence"  # top-1 confidence counts (Count), dimension Bin
REQUEST_LATENCY_METRIC = "RequestLatencyMs"  # every request's latency: Values (bucket bounds) and Counts, Milliseconds
SHADOW_COUNT_METRICS = (("ShadowCompared", "compared"), ("ShadowAgree", "agree"), ("ShadowErrors", "errors"), ("ShadowInvalid", "invalid"))
SHADOW_LATENCY_METRIC = "ShadowLatencyMs"  # the candidate's, on the shadowed requests; dimension Candidate
SHADOW_SERVED_LATENCY_METRIC = "ShadowServedLatencyMs"  # the served model's, on the same requests; dimension Candidate
LABELLED_METRICS = (("LabelledRequests", "n"), ("LabelledCorrect", "correct"))

# The status shadow: a named shadow per model on the device's thing, `edgefleet-<model>`, that the agent updates
# (iot-data UpdateThingShadow, with the token exchange service's credentials) when what it serves, its status or why a
# deployment waits changes, and at most every STATUS_SHADOW_HEARTBEAT seconds otherwise. It holds only
# STATUS_SHADOW_FIELDS (well under 1 KB), so fleet indexing can count a ring's devices per reported version in one
# GetBucketsAggregation call (`shadow.name.edgefleet-<model>.reported.version`, a custom field of the stack's indexing
# configuration) instead of one call per device. Fields: version and sha256 served (null: nothing verified), status
# (the report's), rollout and ring (the deployment's, as the agent received them), at (epoch seconds of the report);
# and deferred: why a deployment waits on this device (a closed maintenance window, an
# application's deferral: contract/state.py `deferral_summary`, at most DEFERRED_LIMIT characters, the same text on
# every device held for the same cause), null when nothing is held (so the shadow drops it). It is a custom field too
# (STATUS_SHADOW_INDEXED), so `edgefleet status` counts a ring's held devices per reason in one more aggregation; a
# shadow written before it has no such field and counts as not held. Fields are only ever appended.
STATUS_SHADOW_PREFIX = "edgefleet-"
STATUS_SHADOW_FIELDS = ("version", "sha256", "status", "rollout", "ring", "at", "deferred")
STATUS_SHADOW_INDEXED = ("version", "deferred")  # the custom fields (String) of the stack's fleet-indexing configuration
STATUS_SHADOW_HEARTBEAT = 3600


def status_shadow(model: str) -> str:
    """The named shadow an agent serving `model` keeps (shadow names: [a-zA-Z0-9:_-], at most 64 characters)."""
    return f"{STATUS_SHADOW_PREFIX}{model}"[:64]


def status_shadow_field(model: str, field: str) -> str:
    """A status shadow field as fleet indexing names it."""
    return f"shadow.name.{status_shadow(model)}.reported.{field}"


def status_shadow_document(
    version: str | None, sha256: str | None, status: str, rollout: str, ring: str, at: float, deferred: str | None = None
) -> dict[str, dict[str, dict[str, object]]]:
    """The UpdateThingShadow payload: the reported state only, so the agent never writes desired."""
    values = (version, sha256, str(status), rollout, ring, int(at), deferred)
    return {"state": {"reported": dict(zip(STATUS_SHADOW_FIELDS, values, strict=True))}}
