"""The AWS IoT Greengrass v2 wire format: what the agent component's container receives and what it files.

In: the agent component's recipe (components/aws/recipes.py) sets these environment variables from the model
component's configuration keys, through recipe variables the nucleus interpolates at deployment time.
Out: CloudWatch metrics under the stack's namespace, dimensioned by rollout, ring and version, which the ring's
gate reads (components/aws/hub.py). Both sides import the names from here.

What the applications' traffic showed (contract/telemetry.py) travels as the same bounded summaries, per rollout, ring
and version, never per device: the count of classified requests and, with a `Class` dimension, the top-1 class
counts of the window's top-K classes plus "other" (a ring's metric streams grow with the model's classes, never with
its devices); top-1 confidence counts with a `Bin` dimension (CONFIDENCE_BINS streams); every request's latency as one
metric of values and counts (bucket bounds and their counts, so CloudWatch's percentiles over a ring are the merged
histogram's); a shadowed candidate's compared / agreeing / failed / NaN requests and both models' latencies with a
`Candidate` dimension (the candidate's version); labelled requests and how many were right.
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
ROLLOUT_ID_KEY = "RolloutId"  # merged beside Rollout and Ring; echoed by nobody, read by the gate's deployments

# CloudWatch: a window's counts and latency per (rollout, ring, version), and per device only for a bad window
DIMENSIONS = ("Rollout", "Ring", "Version")
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
# (iot-data UpdateThingShadow, with the token exchange service's credentials) when what it serves or its status
# changes, and at most every STATUS_SHADOW_HEARTBEAT seconds otherwise. It holds only STATUS_SHADOW_FIELDS (well under
# 1 KB), so fleet indexing can count a ring's devices per reported version in one GetBucketsAggregation call
# (`shadow.name.edgefleet-<model>.reported.version`, a custom field of the stack's indexing configuration) instead of
# one call per device. Fields: version and sha256 served (null: nothing verified), status (the report's), rollout and
# ring (the deployment's, as the agent received them), at (epoch seconds of the report).
STATUS_SHADOW_PREFIX = "edgefleet-"
STATUS_SHADOW_FIELDS = ("version", "sha256", "status", "rollout", "ring", "at")
STATUS_SHADOW_HEARTBEAT = 3600


def status_shadow(model: str) -> str:
    """The named shadow an agent serving `model` keeps (shadow names: [a-zA-Z0-9:_-], at most 64 characters)."""
    return f"{STATUS_SHADOW_PREFIX}{model}"[:64]


def status_shadow_field(model: str, field: str) -> str:
    """A status shadow field as fleet indexing names it."""
    return f"shadow.name.{status_shadow(model)}.reported.{field}"


def status_shadow_document(
    version: str | None, sha256: str | None, status: str, rollout: str, ring: str, at: float
) -> dict[str, dict[str, dict[str, object]]]:
    """The UpdateThingShadow payload: the reported state only, so the agent never writes desired."""
    values = (version, sha256, str(status), rollout, ring, int(at))
    return {"state": {"reported": dict(zip(STATUS_SHADOW_FIELDS, values, strict=True))}}
