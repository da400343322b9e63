"""The AWS IoT Greengrass v2 wire format: what the agent component's container receives and what it files.

In: the agent component's recipe (components/aws/recipes.py) sets these environment variables from the model
component's configuration keys, through recipe variables the nucleus interpolates at deployment time.
Out: CloudWatch metrics under the stack's namespace, dimensioned by rollout, ring and version, which the ring's
gate reads (components/aws/hub.py). Both sides import the names from here.
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
