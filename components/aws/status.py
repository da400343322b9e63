"""What `edgefleet status` shows for a stack on AWS, read on demand with aggregate calls only.

What it reads, per stack: one `sts:GetCallerIdentity` (the account, and a credentials check that fails fast with the
cause and the fix); where rollout records are (`EDGEFLEET_AWS_BUCKET`, else one `tag:GetResources` for the S3 bucket
tagged `edgefleet:stack=<stack>`, paged). Per rollout: its records' keys (`ListObjectsV2`, paged) and the latest one
(`GetObject`): the rollout's state and its last gate verdict with the values measured. Per ring: the ring thing
group's latest Greengrass deployment (`ListDeployments` LATEST_ONLY, `GetDeployment`): the desired version; the ring's
size (`iot:GetStatistics` over the ring's own fleet-indexing query, as its dynamic thing group selects); the connected
devices per version the agents reported in their status shadow (`iot:GetBucketsAggregation` on
`shadow.name.edgefleet-<model>.reported.version`, contract/greengrass.py); for a ring with drift, the devices held back
per reason (one more `iot:GetBucketsAggregation`, on `…reported.deferred`, over the ring's connected devices not on the
desired version: `held_query`). So the calls grow with rings and pages, never with devices: Greengrass answers
installed components per device only, and this never asks it that.

Silent devices are those the ring selects that are not counted under a version: never reported, or not connected
(`connectivity.connected`, indexed by the stack's indexing configuration).

Every call goes through `Caller`: bounded retries with exponential backoff and full jitter for throttling, 5xx and
dropped connections, then a `CloudError` naming the cause and the fix. The credentials check failing stops the
command (`CloudError` is a FaultError: exit 5); a later call failing leaves a gap, and the answer is partial.

The hard part is pure (`rings_of`, `classify`, `desired_of`, `versions_of`), the wiring thin (`read_status`).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from components.aws.plan import MAX_QUERY_TERMS, Naming, query_terms
from components.rollout.status import CloudError, gap, latest_record, ring_row, rollout_row
from edgefleet_agent.contract import greengrass as gg
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import parse_manifest_bytes

GATE_TYPE = "pulumi-python:dynamic/edgefleet-aws:RingGate"
THING_GROUP_TYPE = "aws-native:iot:ThingGroup"
MAX_BUCKETS = 100  # versions per ring counted; more than that is a broken fleet, and the rest count as silent
BUCKET_ENV = "EDGEFLEET_AWS_BUCKET"
STACK_TAG = "edgefleet:stack"

THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "LimitExceededException",
}
EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
INVALID = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthFailure"}
DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException", "Forbidden"}
NO_CREDENTIALS = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "SSOTokenLoadError",
    "UnauthorizedSSOTokenError",
}
UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "ProxyConnectionError"}


# -- what went wrong, as data ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cause:
    kind: str  # credentials | expired | invalid | denied | throttled | unavailable | unreachable | failed
    retry: bool
    problem: str
    fix: str


def classify(exc: BaseException, operation: str) -> Cause:
    """Why an AWS call failed, from the exception's class name, error code and HTTP status (no botocore import)."""
    name = type(exc).__name__
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or "")
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    message = str((response.get("Error") or {}).get("Message") or exc)
    if name in NO_CREDENTIALS:
        return Cause(
            "credentials",
            False,
            f"no AWS credentials found ({name}: {exc})",
            "sign in and name the profile: `aws sso login --profile <p>` then `AWS_PROFILE=<p> edgefleet status …`, or set "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)",
        )
    if code in EXPIRED:
        return Cause(
            "expired",
            False,
            f"the AWS credentials have expired ({code})",
            "refresh them (`aws sso login --profile <p>`, or a new session token) and run it again",
        )
    if code in INVALID:
        return Cause(
            "invalid",
            False,
            f"AWS does not accept these credentials ({code}: {message})",
            "check AWS_PROFILE / the access key in use (`aws sts get-caller-identity`)",
        )
    if code in DENIED or status == 403:
        return Cause(
            "denied",
            False,
            f"not allowed to call {operation} ({code or status}: {message})",
            f'grant the identity running `edgefleet status` {operation} (docs/aws.md, "edgefleet status": the read-only policy)',
        )
    if code in THROTTLED or status == 429:
        return Cause(
            "throttled",
            True,
            f"AWS throttled {operation} ({code or status})",
            "wait a minute and run it again, or watch with a longer --interval",
        )
    if status >= 500 or code in (
        "InternalFailure",
        "InternalServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
    ):
        return Cause(
            "unavailable",
            True,
            f"AWS answered {operation} with {status or code} ({message})",
            "AWS had a service error; run it again in a minute (health.aws.amazon.com)",
        )
    if name in UNREACHABLE:
        return Cause(
            "unreachable",
            True,
            f"cannot reach AWS for {operation} ({name}: {exc})",
            "check the network, proxy settings and the region (edgefleet:aws.region)",
        )
    return Cause(
        "failed",
        False,
        f"{operation} failed ({code or name}: {message})",
        "see the message; `aws --debug` with the same call shows the request",
    )


@dataclass
class Caller:
    """Calls one AWS operation with bounded retries (full-jitter exponential backoff), counting every request."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    calls: Counter = field(default_factory=Counter)

    def __call__(self, client: Any, operation: str, where: str, **kwargs: Any) -> Any:
        for attempt in range(self.attempts):
            self.calls[operation] += 1
            try:
                return getattr(client, operation)(**kwargs)
            except Exception as exc:  # noqa: BLE001 - classified: a cause and a fix, or re-raised as ours
                cause = classify(exc, _action(client, operation))
                if cause.retry and attempt + 1 < self.attempts:
                    self.sleep(random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt)))
                    continue
                raise CloudError(where, cause.problem, cause.fix, cause.kind) from None
        raise AssertionError("unreachable")

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def _action(client: Any, operation: str) -> str:
    """`iot:GetStatistics` from a boto3 client and its method name."""
    meta = getattr(client, "meta", None)
    prefix = getattr(getattr(meta, "service_model", None), "signing_name", None) or "aws"
    try:
        op = meta.method_to_api_mapping[operation]  # type: ignore[union-attr]
    except (AttributeError, KeyError):
        op = "".join(p.title() for p in operation.split("_"))
    return f"{prefix}:{op}"


class Clients:
    """boto3 clients for the region, built on first use; botocore's own retries off, so `Caller` counts every request."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._made: dict[str, Any] = {}

    def get(self, service: str) -> Any:
        if service not in self._made:
            import boto3
            from botocore.config import Config

            config = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30)
            self._made[service] = boto3.client(service, region_name=self.region, config=config)
        return self._made[service]


# -- the stack's rings, from the declared graph (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class RingSpec:
    name: str
    thing_group: str
    query: str


@dataclass(frozen=True)
class RolloutSpec:
    rollout: str
    model: str
    declared: str
    model_component: str
    region: str
    rings: tuple[RingSpec, ...]


def rings_of(graph: dict[str, Any], stack: str) -> list[RolloutSpec]:
    """Each AWS rollout of the graph with its rings in order: thing group names and the fleet-indexing queries their
    dynamic thing groups select by (exactly what `pulumi up` declares)."""
    naming = Naming(stack)
    groups = {
        r["inputs"].get("thingGroupName"): r["inputs"].get("queryString")
        for r in graph.get("resources", [])
        if r["type"] == THING_GROUP_TYPE
    }
    by_rollout: dict[str, dict[str, Any]] = {}
    for r in graph.get("resources", []):
        if r["type"] != GATE_TYPE:
            continue
        i = r["inputs"]
        spec = by_rollout.setdefault(
            i["rollout"],
            {
                "model": i["model"],
                "declared": parse_manifest_bytes(i["manifest"].encode(), f"{i['rollout']} manifest").version,
                "model_component": i["model_component"],
                "region": i["region"],
                "names": [ring["name"] for ring in i.get("rings", [])],
            },
        )
        spec.setdefault("present", set()).add(i["ring"])
    out = []
    for rollout, s in by_rollout.items():
        rings = []
        for name in s["names"]:
            tg = naming.ring_thing_group(rollout, name)
            if name in s["present"] and groups.get(tg):
                rings.append(RingSpec(name, tg, groups[tg]))
        out.append(RolloutSpec(rollout, s["model"], s["declared"], s["model_component"], s["region"], tuple(rings)))
    return out


def desired_of(deployment: dict[str, Any] | None, model_component: str) -> tuple[str | None, bool]:
    """(version, under a rollback order) of the model component a Greengrass deployment carries."""
    spec = ((deployment or {}).get("components") or {}).get(model_component)
    if not spec:
        return None, False
    try:
        merge = json.loads((spec.get("configurationUpdate") or {}).get("merge") or "{}")
    except json.JSONDecodeError:
        merge = {}
    return spec.get("componentVersion"), bool(isinstance(merge, dict) and merge.get("RollbackOrder"))


def held_query(query: str, model: str, desired: str | None) -> str:
    """The ring's connected devices not on `desired`, as far as fleet indexing's MAX_QUERY_TERMS leave room: the agent
    writes one reason into every model's status shadow (the nucleus holds a deployment whole, whichever models it
    changes), so a device already on this ring's version is held for another model's deployment, not this one's."""
    out = connected_reporting(query)
    value = query_value(desired) if desired else None
    if value is not None and query_terms(out) < MAX_QUERY_TERMS:
        out = f"({out}) AND NOT {gg.status_shadow_field(model, 'version')}:{value}"
    return out


def query_value(value: str) -> str | None:
    """`value` as a fleet-indexing term: as it is when plain, a quoted phrase when it holds semver's `-` or `+` (a
    leading `-` would read as NOT, and the syntax documents phrases but not which characters a bare term may hold);
    None for anything else, which a version never is."""
    if PLAIN_VALUE.fullmatch(value):
        return value
    if SEMVER_VALUE.fullmatch(value):
        return f'"{value}"'
    return None


def versions_of(response: dict[str, Any]) -> dict[str | None, int]:
    """{version: devices} from a GetBucketsAggregation answer."""
    return {b["keyValue"]: int(b.get("count") or 0) for b in response.get("buckets") or []}


CONNECTED = "connectivity.connected:true"
PLAIN_VALUE = re.compile(r"[A-Za-z0-9._]+")  # written into a query term as it is
SEMVER_VALUE = re.compile(r"[A-Za-z0-9._+-]+")  # pre-release and build metadata: quoted


def connected_reporting(query: str) -> str:
    """The ring's devices that are connected now, when the query has room for one more term (fleet indexing allows
    MAX_QUERY_TERMS); otherwise the ring's query as it is, so a disconnected device's last report still counts."""
    return f"({query}) AND {CONNECTED}" if query_terms(query) < MAX_QUERY_TERMS else query


# -- the wiring ---------------------------------------------------------------------------------------------------------
def read_status(
    project_dir: Path,
    cfg: Any,
    source: str,
    stack: str,
    graph: dict[str, Any],
    clients: Any = None,
    caller: Caller | None = None,
) -> dict[str, Any]:
    region = cfg.aws.region
    clients = clients if clients is not None else Clients(region)
    call = caller if caller is not None else Caller()
    where = f"AWS {region} (stack {stack})"
    account = call(clients.get("sts"), "get_caller_identity", where)["Account"]
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    gaps: list[dict[str, Any]] = []
    rings: list[dict[str, Any]] = []
    rollouts: list[dict[str, Any]] = []
    bucket = _bucket(clients, call, stack, where, gaps)
    for spec in rings_of(graph, stack):
        record = _latest_record(clients, call, bucket, spec.rollout, gaps) if bucket else None
        rollouts.append(rollout_row(platform="aws", rollout=spec.rollout, declared=spec.declared, record=record))
        for ring in spec.rings:
            rings.append(_ring(clients, call, spec, ring, f"arn:{partition}:iot:{region}:{account}:thinggroup/{ring.thing_group}", gaps))
    return {"rings": rings, "rollouts": rollouts, "declared": [], "gaps": gaps}


def _gap(gaps: list[dict[str, Any]], err: CloudError, what: str) -> None:
    gaps.append(gap("aws", err.where, f"{what}: {err.problem}", err.fix))


def _bucket(clients: Any, call: Caller, stack: str, where: str, gaps: list[dict[str, Any]]) -> str | None:
    if os.environ.get(BUCKET_ENV):
        return os.environ[BUCKET_ENV]
    kwargs: dict[str, Any] = {"TagFilters": [{"Key": STACK_TAG, "Values": [stack]}], "ResourceTypeFilters": ["s3:bucket"]}
    found: list[str] = []
    try:
        while True:
            resp = call(clients.get("resourcegroupstaggingapi"), "get_resources", where, **kwargs)
            found += [m["ResourceARN"].rsplit(":", 1)[-1] for m in resp.get("ResourceTagMappingList", [])]
            if not resp.get("PaginationToken"):
                break
            kwargs["PaginationToken"] = resp["PaginationToken"]
    except CloudError as err:
        _gap(gaps, err, "the model store (rollout records) was not found")
        return None
    if len(found) != 1:
        gaps.append(
            gap(
                "aws",
                where,
                f"{'no' if not found else len(found)} S3 bucket(s) tagged {STACK_TAG}={stack}: rollout states and gate verdicts not read",
                f"set {BUCKET_ENV} to the stack's model bucket (`pulumi stack output` or the S3 console)",
            )
        )
        return None
    return found[0]


def _latest_record(clients: Any, call: Caller, bucket: str, rollout: str, gaps: list[dict[str, Any]]) -> dict[str, Any] | None:
    s3 = clients.get("s3")
    where = f"s3://{bucket}/rollouts/{rollout}/"
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": f"rollouts/{rollout}/"}
    objects: list[dict[str, Any]] = []
    try:
        while True:
            resp = call(s3, "list_objects_v2", where, **kwargs)
            objects += resp.get("Contents", [])
            if not resp.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]
        if not objects:
            return None
        # a gate rewrites its record at every transition, so the rollout in flight is the last one modified; records
        # modified within the same second (S3's precision here) are all read and the latest started wins
        last = max(o["LastModified"] for o in objects)
        newest = sorted(o["Key"] for o in objects if o["LastModified"] == last)
        bodies = [(key, call(s3, "get_object", where, Bucket=bucket, Key=key)["Body"].read()) for key in newest]
    except CloudError as err:
        _gap(gaps, err, f"rollout {rollout}'s records")
        return None
    records = []
    for key, body in bodies:
        try:
            records.append(json.loads(body))
        except json.JSONDecodeError as exc:
            gaps.append(
                gap("aws", where, f"rollout record {key} is not JSON ({exc})", "a gate writes these; run `pulumi up` to rewrite it")
            )
    return dict(latest) if (latest := latest_record(records)) is not None else None


def _ring(clients: Any, call: Caller, spec: RolloutSpec, ring: RingSpec, arn: str, gaps: list[dict[str, Any]]) -> dict[str, Any]:
    where = f"ring {spec.rollout}/{ring.name} (thing group {ring.thing_group})"
    partial = False
    desired, rollback = None, False
    try:
        listed = call(clients.get("greengrassv2"), "list_deployments", where, targetArn=arn, historyFilter="LATEST_ONLY")
        latest = [d for d in listed.get("deployments", []) if d.get("isLatestForTarget", True) and not d.get("parentTargetArn")]
        if latest:
            deployment = call(clients.get("greengrassv2"), "get_deployment", where, deploymentId=latest[0]["deploymentId"])
            desired, rollback = desired_of(deployment, spec.model_component)
    except CloudError as err:
        _gap(gaps, err, "desired version not read")
        partial = True
    devices: int | None = None
    reported: dict[str | None, int] | None = None
    iot = clients.get("iot")
    try:
        devices = int(call(iot, "get_statistics", where, queryString=ring.query)["statistics"].get("count") or 0)
        resp = call(
            iot,
            "get_buckets_aggregation",
            where,
            queryString=connected_reporting(ring.query),
            aggregationField=gg.status_shadow_field(spec.model, "version"),
            bucketsAggregationType={"termsAggregation": {"maxBuckets": MAX_BUCKETS}},
        )
        reported = versions_of(resp)
        if len(reported) >= MAX_BUCKETS:
            gaps.append(gap("aws", where, f"more than {MAX_BUCKETS} versions reported: only the {MAX_BUCKETS} most common are counted"))
            partial = True
    except CloudError as err:
        _gap(gaps, err, "devices per version not read")
        partial = True
    held: dict[str, int] | None = {} if reported is not None else None
    if reported is not None and any(n for v, n in reported.items() if v != desired):  # a held device is not on desired
        try:
            resp = call(
                iot,
                "get_buckets_aggregation",
                where,
                queryString=held_query(ring.query, spec.model, desired),
                aggregationField=gg.status_shadow_field(spec.model, "deferred"),
                bucketsAggregationType={"termsAggregation": {"maxBuckets": MAX_BUCKETS}},
            )
            held = {str(k): n for k, n in versions_of(resp).items() if k}
        except CloudError as err:
            _gap(gaps, err, "devices held back not read")
            held, partial = None, True
    return ring_row(
        platform="aws",
        rollout=spec.rollout,
        ring=ring.name,
        desired=desired,
        rollback=rollback,
        devices=devices,
        reported=reported,
        partial=partial,
        held=held,
    )


def read_history(project_dir: Path, cfg: Any, source: str, stack: str) -> list[dict[str, Any]]:
    raise EdgefleetError(
        source,
        "history reads the local hub; this stack's rollout records live in its cloud store",
        "for cloud stacks, `edgefleet status --stack` shows each rollout's state and last gate verdict; "
        "past records are under rollouts/ in the stack's model bucket",
    )
