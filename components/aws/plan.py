"""Pure data for the AWS platform: names, fleet-indexing queries, ring job policies and Greengrass deployment
requests, and the gate's typed inputs (each ring's maintenance windows among them), handed to the shared gate driver
(components/rollout/driver.py).

The Pulumi program (platform.py) and the gate/rollback code (hub.py) build their CreateDeployment payloads
with the same `deployment_request`, so the deployment Pulumi declares for a ring and the one the gate
creates to roll it back differ only where they must (component version, the signed rollback order).
No Pulumi and no boto3 imports here: tests and policies call these functions directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from components.aws.config import AwsConfig
from components.props import RingGateProps
from components.rollout.driver import GateInputs
from components.rollout.driver import run_gate as drive_gate
from components.rollout.hub import WallClock
from components.rollout.progress import Progress, rollout_id
from components.rollout.spec import DeviceGroupConfig, GateConfig, RingConfig, RolloutConfig
from components.rollout.types import RingTarget
from edgefleet_agent.contract.greengrass import NOTIFY_COMPONENTS, SKIP_NOTIFY_COMPONENTS, WINDOWS_KEY
from edgefleet_agent.contract.state import DesiredModel

ACCOUNT_RE = r"[0-9]{12}"
GG_ARCH = {"amd64": "amd64", "arm64": "aarch64", "armv7": "arm"}  # manifest arch -> Greengrass platform architecture
ROLLBACK_KEYS = ("/RollbackOrder", "/RollbackSignature")
MIN_ABORT_PERCENT = 0.01


# -- names --------------------------------------------------------------------------------------------------
def partition(region: str) -> str:
    return "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"


def fit(name: str, limit: int) -> str:
    """`name`, or a stable shortening of it with a hash suffix when it exceeds an AWS name limit."""
    if len(name) <= limit:
        return name
    return name[: limit - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Naming:
    """Physical names: prefixed with the stack so aws-dev and aws-prod can share an account and region."""

    stack: str

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9-]", "-", self.stack.lower()).strip("-") or "stack"

    @property
    def prefix(self) -> str:
        return f"edgefleet-{self.slug}"

    def thing_type(self, aws: AwsConfig) -> str:
        return aws.thing_type or fit(f"{self.prefix}-device", 128)

    def group_thing_group(self, group: str) -> str:
        return fit(f"{self.prefix}-{group}", 128)

    def ring_thing_group(self, rollout: str, ring: str) -> str:
        return fit(f"{self.prefix}-{rollout}-{ring}", 128)

    def component(self, model: str, kind: str) -> str:
        return fit(f"edgefleet.{self.slug}.{model}.{kind}", 128)

    def model_component(self, model: str) -> str:
        return self.component(model, "Model")

    @property
    def agent_component(self) -> str:
        """The stack's one agent component: every model component of the stack depends on it (agent 0.4.0 on)."""
        return fit(f"edgefleet.{self.slug}.Agent", 128)

    def deployment_name(self, rollout: str, ring: str, version: str | None, rollback: bool = False) -> str:
        what = "remove model" if version is None else f"{'rollback to ' if rollback else ''}{version}"
        return fit(f"{self.prefix} {rollout}/{ring}: {what}", 256)

    def alarm(self, rollout: str, ring: str, what: str) -> str:
        return fit(f"{self.prefix}-{rollout}-{ring}-{what}", 255)

    @property
    def device_role(self) -> str:
        return fit(f"{self.prefix}-device", 64)

    @property
    def role_alias(self) -> str:
        return fit(f"{self.prefix}-device-role-alias", 128)

    @property
    def core_policy(self) -> str:
        return fit(f"{self.prefix}-core-device", 128)

    @property
    def repository(self) -> str:
        return fit(f"{self.prefix}/agent", 256)


def model_key(model: str, sha256: str, suffix: str = ".onnx") -> str:
    """Content-addressed object key: a new version never overwrites an old one, so rollbacks can always download."""
    return f"models/{model}/{sha256}{suffix}"


def progress_key(rollout: str, rollout_id: str) -> str:
    return f"rollouts/{rollout}/{rollout_id}.json"


# -- ring selection: fleet-indexing queries ------------------------------------------------------------------
def _attributes(labels: dict[str, str]) -> list[str]:
    return [f"attributes.{k}:{v}" for k, v in sorted(labels.items())]


def group_clause(group: DeviceGroupConfig, thing_type: str, group_thing_group: str) -> str:
    """Which things belong to a device group: its labels on things of the fleet's type, or its static thing group."""
    if group.labels:
        return " AND ".join([f"thingTypeName:{thing_type}", *_attributes(group.labels)])
    return f"thingGroupNames:{group_thing_group}"


def ring_terms(ring: RingConfig, groups: dict[str, DeviceGroupConfig], thing_type: str, naming: Naming) -> list[str]:
    """What a ring selects before earlier rings take their share: its group's terms AND its own labels."""
    base = group_clause(groups[ring.group], thing_type, naming.group_thing_group(ring.group))
    return [*base.split(" AND "), *(t for t in _attributes(ring.labels) if t not in base.split(" AND "))]


def ring_clause(ring: RingConfig, groups: dict[str, DeviceGroupConfig], thing_type: str, naming: Naming) -> str:
    return " AND ".join(ring_terms(ring, groups, thing_type, naming))


def ring_query(rollout: RolloutConfig, index: int, groups: dict[str, DeviceGroupConfig], thing_type: str, naming: Naming) -> str:
    """Ring `index`'s dynamic thing group query. Rings are disjoint (a device belongs to the first ring that
    selects it): Greengrass merges the deployments of every group a device is in and fails on two versions of
    one component, so ring N excludes rings 0..N-1. Ring N's query reads rings 0..N only, never a later one.

    An earlier ring's terms that ring N already requires are left out of its NOT: own AND NOT (A AND B) is
    own AND NOT B when own implies A. That keeps queries within fleet indexing's 12 terms for longer."""
    terms = [ring_terms(r, groups, thing_type, naming) for r in rollout.rings[: index + 1]]
    own = terms[index]
    if index == 0:
        return " AND ".join(own)
    excluded = [[t for t in earlier if t not in own] or earlier for earlier in terms[:index]]  # all implied: selects nothing, as it should
    return " AND ".join([*own, *(f"NOT ({' AND '.join(e)})" if len(e) > 1 else f"NOT {e[0]}" for e in excluded)])


MAX_QUERY_TERMS = 12  # "the maximum number of terms in a query is 12" (AWS IoT developer guide, query syntax)


def query_terms(query: str) -> int:
    """Field terms in a fleet-indexing query, which AWS IoT caps at 12 per query."""
    return len(re.findall(r"[\w.]+:\S+", query))


# AWS allows three searchable attributes per thing type and they are create-only (UpdateThingType changes only
# mqtt5Configuration), so the thing type does not follow the labels in use: fleet indexing (REGISTRY mode)
# indexes every attribute, which is what the rings' dynamic thing groups query.
SEARCHABLE_ATTRIBUTES = ("ring",)


# -- ring job policy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RingJobPolicy:
    devices: int
    max_per_minute: int
    abort_percent: float
    abort_min_executed: int
    timeout_minutes: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ring_job_policy(aws: AwsConfig, ring: RingConfig) -> RingJobPolicy:
    """The ring's IoT job settings: explicit values from `edgefleet:aws.rings.<ring>`, else derived from its gate."""
    p = aws.rings[ring.name]
    gate: GateConfig = ring.gate
    # IoT cancels the job once the failed share reaches the threshold, so a gate that tolerates no failure maps to
    # the smallest threshold IoT takes (two decimals), not to 0, which every finished execution would reach.
    abort = p.abort_failure_percent if p.abort_failure_percent is not None else max(gate.max_failure_share * 100, MIN_ABORT_PERCENT)
    timeout = p.timeout_minutes if p.timeout_minutes is not None else min(10080, max(1, math.ceil(gate.deadline_seconds / 60)))
    return RingJobPolicy(
        devices=p.devices,
        max_per_minute=p.max_per_minute,
        abort_percent=round(abort, 2),
        abort_min_executed=p.abort_min_executed,
        timeout_minutes=timeout,
    )


def iot_job_configuration(policy: RingJobPolicy) -> dict[str, Any]:
    """The IoT job behind a ring's deployment: rate-limited, cancelled when failures pass the threshold, timed out."""
    return {
        "jobExecutionsRolloutConfig": {"maximumPerMinute": policy.max_per_minute},
        "abortConfig": {
            "criteriaList": [
                {
                    "failureType": "ALL",
                    "action": "CANCEL",
                    "thresholdPercentage": policy.abort_percent,
                    "minNumberOfExecutedThings": policy.abort_min_executed,
                }
            ]
        },
        "timeoutConfig": {"inProgressTimeoutInMinutes": policy.timeout_minutes},
    }


def deployment_policies(notify: bool = True) -> dict[str, Any]:
    """ROLLBACK: a device whose components fail to start returns to its previous deployment by itself.

    NOTIFY_COMPONENTS (forward deployments): the nucleus asks the components subscribed to updates first, and the agent
    defers the deployment (DeferComponentUpdate) while the device's maintenance window is closed or an application holds
    a swap back (edgefleet_agent/contract/greengrass.py). `notify=False`, SKIP_NOTIFY_COMPONENTS, for rollbacks and
    removals: no component is asked, so nothing on the device can hold a bad version in place."""
    return {
        "failureHandlingPolicy": "ROLLBACK",
        "componentUpdatePolicy": {"action": NOTIFY_COMPONENTS if notify else SKIP_NOTIFY_COMPONENTS, "timeoutInSeconds": 60},
        "configurationValidationPolicy": {"timeoutInSeconds": 60},
    }


# -- deployment payloads ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RingComponents:
    """The components a ring runs for one model, and where the ring sits (merged into the model's config). The agent
    is not deployed by name: the model component depends on it (`>=` the stack's agent version), so the nucleus
    resolves one agent version for every model of the device. `agent_component`/`agent_version` stay for the record."""

    model_component: str
    agent_component: str
    agent_version: str
    rollout: str
    ring: str
    windows: str = ""  # the ring's group's maintenance windows document (DeviceGroupConfig.windows_document), "" for none


def components_spec(
    c: RingComponents, model_version: str | None, rollout_id: str, rollback: tuple[str, str] | None = None
) -> dict[str, Any]:
    """The `components` map of a ring's deployment.

    Forward: the model version, with any earlier rollback order reset away. Rollback: the last good version
    with the signed rollback order merged into the model component's configuration, the only thing that
    makes the agent accept a lower version. `model_version=None`: the ring runs no model (a first rollout
    that failed): Greengrass removes the model component from the ring's devices, and the agent component with it
    unless another model still depends on it (then its Shutdown marker makes the agent unload the model).
    """
    if model_version is None:
        return {}
    merge: dict[str, Any] = {"Rollout": c.rollout, "Ring": c.ring, "RolloutId": rollout_id}
    if c.windows:  # the agent defers forward deployments outside them (a group without windows: the payload as before)
        merge[WINDOWS_KEY] = c.windows
    update: dict[str, Any] = {}
    if rollback is None:
        update["reset"] = list(ROLLBACK_KEYS)
    else:
        merge.update({"RollbackOrder": rollback[0], "RollbackSignature": rollback[1]})
    update["merge"] = json.dumps(merge, sort_keys=True)
    return {c.model_component: {"componentVersion": model_version, "configurationUpdate": update}}


def deployment_tags(rollout: str, ring: str, version: str | None) -> dict[str, str]:
    return {"edgefleet:rollout": rollout, "edgefleet:ring": ring, "edgefleet:version": version or "none"}


def deployment_request(
    target_arn: str,
    name: str,
    components: dict[str, Any],
    policy: RingJobPolicy,
    tags: dict[str, str],
    client_token: str | None = None,
    notify: bool = True,
) -> dict[str, Any]:
    """greengrassv2 CreateDeployment parameters (also the aws-native Deployment's inputs, which share the shape).
    `notify=False` for a rollback or a removal (deployment_policies)."""
    req: dict[str, Any] = {
        "targetArn": target_arn,
        "deploymentName": name,
        "components": components,
        "deploymentPolicies": deployment_policies(notify),
        "iotJobConfiguration": iot_job_configuration(policy),
        "tags": tags,
    }
    if client_token is not None:
        req["clientToken"] = client_token
    return req


def client_token(*parts: str) -> str:
    """Idempotency token for CreateDeployment: a resumed gate re-sending a rollback creates it once."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:64]


# -- the gate: typed resource inputs -> the shared driver ------------------------------------------------------
class AwsRingGateProps(RingGateProps):
    """A ring gate on AWS: where the rollout records and the agents' metrics are, the rings' thing groups and job
    policies, the components the rings deploy, and the KMS key that signs rollback orders."""

    region: str
    bucket: str
    signing_key: str
    metric_namespace: str
    total_rings: int
    targets: list[str]  # each ring's thing group ARN
    policies: list[dict[str, Any]]  # each ring's RingJobPolicy
    model_component: str
    agent_component: str
    agent_version: str
    control_rings: list[str] = []  # the rings after this one, still on the previous version: its quality's control group
    # each ring's group's maintenance windows document ("" for none), written only when any: merged into the ring's
    # deployments, and the ring's deadline pauses while its window is closed (ring_plans)
    windows: list[str] = []


def desired_from_props(props: Mapping[str, Any]) -> DesiredModel:
    """The declared artifact with the rollout id its deployments carry (RolloutId in the model's configuration)."""
    d = AwsRingGateProps.of(props).declared()
    return replace(d, rollout=rollout_id(props["rollout"], d))


def run_gate(props: Mapping[str, Any], clients: Any = None, clock: Any = None) -> Progress:
    """The RingGate resource on AWS: the shared driver over Greengrass deployments and the agents' CloudWatch metrics."""
    from components.aws.hub import AwsHub
    from components.aws.signer import KmsSigner
    from components.aws.trust_store import repository_for_uri

    p = AwsRingGateProps.of(props)
    clock = clock or WallClock()
    hub = AwsHub.from_props(p, clients=clients, clock=clock.now)
    rings = p.ring_plans(p.targets, p.windows)
    control = tuple(RingTarget(p.rollout, name, p.index + 1 + i, None) for i, name in enumerate(p.control_rings))
    gate = GateInputs(
        rollout=p.rollout,
        ring=p.ring,
        index=p.index,
        total_rings=p.total_rings,
        rings=(*rings[:-1], replace(rings[-1], control=control)),
        declared=p.declared(),
        poll_seconds=p.poll_seconds,
        apply=f"run `pulumi up --stack {p.stack}`",
    )
    signer = KmsSigner(p.signing_key, p.region, client=clients.kms if clients is not None else None)
    # the bucket is the stack's TUF repository: refreshed before the ring deploys, a rejected version revoked
    trust = repository_for_uri(gate.declared.uri, signer, client=getattr(clients, "s3", None), region=p.region)
    return drive_gate(gate, hub, signer, clock, trust=trust)
