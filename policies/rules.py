"""edgefleet's rules: plain functions over the declared graph, shared by `edgefleet policy` and CrossGuard.

A graph is the list of records `edgefleet synth` writes (urn, type, name, custom, parent, inputs,
dependencies, property_dependencies, outputs); the CrossGuard adapter (policies/pack.py) builds the same
records from what the Pulumi engine hands a policy pack. Each rule yields findings; `evaluate` runs them
all under the stack's enforcement levels (`edgefleet:policy.enforcement`) and says which ones block.

Standard library only, and no imports from edgefleet: the pack's own virtualenv needs nothing but
pulumi-policy, and the rules cannot drift with the CLI because both import this one file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

ADVISORY, MANDATORY, DISABLED = "advisory", "mandatory", "disabled"
LEVELS = (ADVISORY, MANDATORY, DISABLED)

UNKNOWN = "[unknown]"               # edgefleet synth: an output the mock runtime could not compute
SECRET = "[secret]"
COMPUTED_PREFIX = "[computed"       # "[computed at deploy]": what a provider fills in at `pulumi up`

# Defaults mirror edgefleet.config.PolicyConfig / AwsConfig / AzureConfig; tests/policy checks they agree.
DEFAULT_CANARY_MAX_SHARE = 0.1
DEFAULT_MIN_CANARY_SOAK_SECONDS = 300.0
DEFAULT_MAX_METRIC_REGRESSION = 0.02
DEFAULT_SAS_WARNING_DAYS = 30     # time to notice, rotate, and let every device pick up a new base deployment
DEFAULT_AGENT_VERSION = "0.1.0"     # cloud stacks' agent_version default (the agent image they deploy)
LOCAL_AGENT_VERSION = "0.2.0"       # the agent in this checkout, which the local fleet runs (edgefleet_agent.__version__)

MODEL = "edgefleet:models:ModelVersion"
ROLLOUT = "edgefleet:rollout:Rollout"
RING = "edgefleet:rollout:Ring"
GROUP = "edgefleet:fleet:DeviceGroup"
STORE = "edgefleet:storage:ModelStore"
KEY = "edgefleet:signing:SigningKey"
REGISTRY = "edgefleet:registry:AppRegistry"

S3_BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_SSE = ("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
          "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2")
S3_ACLS = ("aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2")
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ECR_REPOSITORY = "aws:ecr/repository:Repository"
KMS_KEY = "aws:kms/key:Key"
KMS_EXTERNAL_KEYS = ("aws:kms/externalKey:ExternalKey", "aws:kms/replicaExternalKey:ReplicaExternalKey")
IAM_POLICY_DOCS = ("aws:iam/policy:Policy", "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
                   "aws:iam/groupPolicy:GroupPolicy", "aws:iot/policy:Policy")
IAM_ROLE = "aws:iam/role:Role"
# Resource policies: documents attached to a resource rather than an identity, same grammar, same risk.
RESOURCE_POLICY_DOCS = {
    KMS_KEY: "KMS key policy", "aws:kms/keyPolicy:KeyPolicy": "KMS key policy",
    S3_POLICY: "S3 bucket policy", **{b: "S3 bucket policy (inline)" for b in S3_BUCKETS},
    "aws:ecr/repositoryPolicy:RepositoryPolicy": "ECR repository policy",
}
IAM_ATTACHMENTS = ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:iam/policyAttachment:PolicyAttachment")
AZ_STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
AZ_BLOB_CONTAINER = "azure-native:storage:BlobContainer"
AZ_REGISTRY = "azure-native:containerregistry:Registry"
AZ_KEY = "azure-native:keyvault:Key"

PUBLIC_S3_ACLS = ("public-read", "public-read-write", "authenticated-read")
ADMIN_POLICY_ARNS = ("arn:aws:iam::aws:policy/AdministratorAccess", "arn:aws:iam::aws:policy/PowerUserAccess",
                     "arn:aws:iam::aws:policy/IAMFullAccess")
MIB = 1024 * 1024


# -- values --------------------------------------------------------------------------------------------------
def is_unknown(value: Any) -> bool:
    """True for what cannot be known before deploy: synth's markers, or nothing at all."""
    return value is None or (isinstance(value, str) and (value in (UNKNOWN, SECRET) or value.startswith(COMPUTED_PREFIX)))


def dig(value: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return default
    return value


def parse_version(text: str) -> tuple:
    """Semantic version as a sortable key (pre-releases sort before their release). Raises ValueError."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?", str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a semantic version such as 1.4.0")
    pre = m.group(4)
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, pre_key


def version_lt(a: str, b: str) -> bool:
    return parse_version(a) < parse_version(b)


def fmt_share(share: float) -> str:
    return f"{share * 100:.1f}%".replace(".0%", "%")


# -- I/O signatures ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IoChange:
    kind: str           # "input" | "output"
    name: str
    detail: str
    breaking: bool


@dataclass(frozen=True)
class IoVerdict:
    verdict: str        # "unchanged" | "compatible" | "breaking"
    changes: tuple[IoChange, ...]

    @property
    def reasons(self) -> list[str]:
        return [f"{c.kind} {c.name!r}: {c.detail}" for c in self.changes if c.breaking]


def signature_text(spec: Mapping[str, Any]) -> str:
    return f"{spec.get('element_type')}[{', '.join(str(d) for d in spec.get('shape') or [])}]"


def _shape_changes(kind: str, name: str, old: list, new: list) -> list[IoChange]:
    if len(old) != len(new):
        return [IoChange(kind, name, f"rank changed: [{', '.join(map(str, old))}] -> [{', '.join(map(str, new))}]", True)]
    out = []
    for i, (a, b) in enumerate(zip(old, new)):
        if a == b:
            continue
        fixed_a, fixed_b = isinstance(a, int), isinstance(b, int)
        if fixed_a and fixed_b:
            out.append(IoChange(kind, name, f"fixed dim {i} changed {a} -> {b}", True))
        elif fixed_a:   # fixed -> symbolic: an input accepts more; an output may now vary in size
            out.append(IoChange(kind, name, f"dim {i} {a} -> symbolic {b!r}", kind == "output"))
        elif fixed_b:   # symbolic -> fixed: an input accepts less; an output only narrows
            out.append(IoChange(kind, name, f"dim {i} symbolic {a!r} -> fixed {b}", kind == "input"))
        else:
            out.append(IoChange(kind, name, f"symbolic dim {i} renamed {a!r} -> {b!r}", False))
    return out


def compare_io(old: Mapping[str, Any], new: Mapping[str, Any]) -> IoVerdict:
    """Whether an app written for `old`'s I/O signature still works with `new`'s, and why not.

    Inputs: removing, renaming or adding one breaks callers (ONNX inputs have no defaults), as do dtype
    and fixed-dim changes. Outputs: removing, renaming or retyping one breaks readers; adding one does not.
    """
    changes: list[IoChange] = []
    for kind in ("input", "output"):
        olds = {t["name"]: t for t in old.get(kind + "s") or []}
        news = {t["name"]: t for t in new.get(kind + "s") or []}
        removed = [n for n in olds if n not in news]
        added = [n for n in news if n not in olds]
        if len(removed) == 1 and len(added) == 1 and signature_text(olds[removed[0]]) == signature_text(news[added[0]]):
            changes.append(IoChange(kind, removed[0], f"renamed to {added[0]!r} ({signature_text(news[added[0]])})", True))
            removed, added = [], []
        for n in removed:
            changes.append(IoChange(kind, n, f"removed (was {signature_text(olds[n])})", True))
        for n in added:
            if kind == "input":
                changes.append(IoChange(kind, n, f"added ({signature_text(news[n])}): callers do not feed it", True))
            else:
                changes.append(IoChange(kind, n, f"added ({signature_text(news[n])}): existing readers ignore it", False))
        for n in olds:
            if n not in news:
                continue
            a, b = olds[n], news[n]
            if a.get("element_type") != b.get("element_type"):
                changes.append(IoChange(kind, n, f"dtype changed {a.get('element_type')} -> {b.get('element_type')}", True))
            changes.extend(_shape_changes(kind, n, list(a.get("shape") or []), list(b.get("shape") or [])))
    verdict = "unchanged" if not changes else ("breaking" if any(c.breaking for c in changes) else "compatible")
    return IoVerdict(verdict, tuple(changes))


# -- hardware -------------------------------------------------------------------------------------------------
def hardware_problems(target: Mapping[str, Any], hardware: Mapping[str, Any]) -> list[str]:
    """Why a device profile cannot run a model target (empty: it can). Same rule as edgefleet.config.hardware_runs."""
    out = []
    if target.get("arch") != hardware.get("arch"):
        out.append(f"arch {target.get('arch')} != {hardware.get('arch')}")
    have = list(hardware.get("execution_providers") or [])
    if not any(ep in have for ep in target.get("execution_providers") or []):
        out.append(f"needs one of {', '.join(target.get('execution_providers') or [])}; device has {', '.join(have) or 'none'}")
    if (target.get("memory_mb") or 0) > (hardware.get("memory_mb") or 0):
        out.append(f"needs {target.get('memory_mb')} MB memory; device budget {hardware.get('memory_mb')} MB")
    if (target.get("storage_mb") or 0) > (hardware.get("storage_mb") or 0):
        out.append(f"needs {target.get('storage_mb')} MB storage; device budget {hardware.get('storage_mb')} MB")
    return out


def hardware_runs(target: Mapping[str, Any], hardware: Mapping[str, Any]) -> bool:
    return not hardware_problems(target, hardware)


# -- the graph --------------------------------------------------------------------------------------------------
class Graph:
    """Read-only views over graph records: by URN, by type, children and subtrees."""

    def __init__(self, resources: Iterable[Mapping[str, Any]]) -> None:
        self.resources = [dict(r) for r in resources]
        self.by_urn = {r["urn"]: r for r in self.resources}
        self._children: dict[str, list[dict]] = {}
        for r in self.resources:
            if r.get("parent"):
                self._children.setdefault(r["parent"], []).append(r)

    def of_type(self, *types: str) -> list[dict]:
        return [r for r in self.resources if r.get("type") in types]

    def children(self, urn: str) -> list[dict]:
        return list(self._children.get(urn, []))

    def descendants(self, urn: str) -> list[dict]:
        out, todo = [], list(self._children.get(urn, []))
        while todo:
            r = todo.pop()
            out.append(r)
            todo.extend(self._children.get(r["urn"], []))
        return out

    def subtree(self, urn: str) -> set[str]:
        return {urn} | {r["urn"] for r in self.descendants(urn)}

    def models(self) -> dict[str, dict]:
        return {model_name(r): r for r in self.of_type(MODEL)}

    def groups(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.of_type(GROUP)}

    def rings(self, rollout: Mapping[str, Any]) -> list[dict]:
        rings = [r for r in self.children(rollout["urn"]) if r.get("type") == RING]
        return sorted(rings, key=lambda r: (dig(r, "inputs", "index", default=0) or 0, r["name"]))


def model_name(rec: Mapping[str, Any]) -> str:
    return str(dig(rec, "inputs", "name") or rec.get("name"))


def manifest_of(rec: Mapping[str, Any]) -> dict | None:
    m = dig(rec, "inputs", "manifest")
    return m if isinstance(m, Mapping) else None


def ring_name(rec: Mapping[str, Any]) -> str:
    return str(dig(rec, "inputs", "ring") or rec.get("name"))


# -- settings -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the rules need to know about the stack besides its graph.

    `base_models` (model name -> the manifest it replaces) exists only when a base graph was synthesized
    (`--base`); `ring_devices` / `rollout_devices` only where membership is computable offline (local).
    `declared_ring_devices` (platform -> ring -> devices) is what cloud stacks declare each ring must reach
    (`edgefleet:aws.rings.<ring>.devices`): the only size a label-selected cloud ring has before deploy.
    `project_dir` lets the digest rule re-hash local artifacts; it is never set under CrossGuard.
    """

    stack: str = ""
    production: bool = False
    canary_max_share: float = DEFAULT_CANARY_MAX_SHARE
    min_canary_soak_seconds: float = DEFAULT_MIN_CANARY_SOAK_SECONDS
    metric_floors: Mapping[str, float] = field(default_factory=dict)
    max_metric_regression: float = DEFAULT_MAX_METRIC_REGRESSION
    enforcement: Mapping[str, str] = field(default_factory=dict)
    agent_versions: Mapping[str, str] = field(default_factory=dict)
    base_models: Mapping[str, Any] | None = None
    ring_devices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    rollout_devices: Mapping[str, int] = field(default_factory=dict)
    declared_ring_devices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    azure_sas_expiry: str | None = None
    today: str | None = None                       # ISO date the expiry rule counts from; None: today (UTC)
    sas_warning_days: int = DEFAULT_SAS_WARNING_DAYS
    project_dir: str | None = None

    def level(self, rule: "Rule") -> str:
        return self.enforcement.get(rule.name, rule.default_level)

    def with_overrides(self, values: Mapping[str, Any]) -> "Settings":
        known = {k: v for k, v in values.items() if k in SETTING_SCHEMA and v is not None}
        return replace(self, **known)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], stack: str = "", **extra: Any) -> "Settings":
        """From the stack's `edgefleet:` keys, namespace stripped (a graph's `config`, or PULUMI_CONFIG decoded)."""
        policy = config.get("policy") or {}
        return cls(
            stack=stack,
            production=bool(policy.get("production", False)),
            canary_max_share=float(policy.get("canary_max_share", DEFAULT_CANARY_MAX_SHARE)),
            min_canary_soak_seconds=float(policy.get("min_canary_soak_seconds", DEFAULT_MIN_CANARY_SOAK_SECONDS)),
            metric_floors={str(k): float(v) for k, v in (policy.get("metric_floors") or {}).items()},
            max_metric_regression=float(policy.get("max_metric_regression", DEFAULT_MAX_METRIC_REGRESSION)),
            enforcement={str(k): str(v) for k, v in (policy.get("enforcement") or {}).items()},
            agent_versions=agent_versions(config),
            declared_ring_devices=declared_ring_devices(config),
            azure_sas_expiry=dig(config, "azure", "device_sas_expiry"),
            **extra,
        )


def agent_versions(config: Mapping[str, Any]) -> dict[str, str]:
    """The agent version each platform's devices run: cloud stacks declare it; the local fleet runs this checkout's."""
    out = {"local": LOCAL_AGENT_VERSION}
    for platform in ("aws", "azure"):
        section = config.get(platform)
        if isinstance(section, Mapping):
            out[platform] = str(section.get("agent_version") or DEFAULT_AGENT_VERSION)
    return out


def declared_ring_devices(config: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Ring sizes cloud stacks declare (`edgefleet:<platform>.rings.<ring>.devices`), by platform then ring name."""
    out: dict[str, dict[str, int]] = {}
    for platform in ("aws", "azure"):
        rings = dig(config, platform, "rings")
        if not isinstance(rings, Mapping):
            continue
        counts = {str(name): policy["devices"] for name, policy in rings.items()
                  if isinstance(policy, Mapping) and type(policy.get("devices")) is int}
        if counts:
            out[platform] = counts
    return out


def settings_from_pulumi_config(env_config: Mapping[str, str], stack: str = "") -> Settings:
    """Settings from PULUMI_CONFIG as the engine passes it to programs and policy packs (`edgefleet:key` -> JSON)."""
    raw = {}
    for key, value in env_config.items():
        ns, _, name = key.partition(":")
        if ns != "edgefleet":
            continue
        name = name.removeprefix("config:")      # older engines wrote `project:config:key`
        try:
            raw[name] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            raw[name] = value
    return Settings.from_config(raw, stack=stack)


# JSON-schema types of the settings a CrossGuard policy accepts in its config (PolicyConfigSchema.properties).
SETTING_SCHEMA: dict[str, dict[str, Any]] = {
    "production": {"type": "boolean"},
    "canary_max_share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "min_canary_soak_seconds": {"type": "number", "minimum": 0},
    "metric_floors": {"type": "object", "additionalProperties": {"type": "number"}},
    "max_metric_regression": {"type": "number", "minimum": 0},
    "agent_versions": {"type": "object", "additionalProperties": {"type": "string"}},
    "base_models": {"type": "object"},
    "ring_devices": {"type": "object"},
    "rollout_devices": {"type": "object"},
    "declared_ring_devices": {"type": "object"},
    "azure_sas_expiry": {"type": "string"},
    "today": {"type": "string"},
    "sas_warning_days": {"type": "integer", "minimum": 1},
}


# -- findings and rules -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    message: str
    urn: str | None = None
    unverified: bool = False       # could not be checked before deploy (unknown value): reported, never blocks


class NotApplicable(Exception):
    """Raised by a rule that has nothing to check on this stack (and says why)."""


@dataclass(frozen=True)
class Rule:
    name: str
    title: str
    default_level: str
    check: Callable[[Graph, Settings], Iterable[Finding]]
    settings: tuple[str, ...] = ()      # Settings fields it reads: its CrossGuard config keys
    description: str = ""


@dataclass
class RuleResult:
    name: str
    title: str
    level: str
    status: str                     # passed | failed | not-applicable | disabled
    findings: list[Finding] = field(default_factory=list)
    note: str = ""

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if not f.unverified]

    @property
    def blocking(self) -> bool:
        return self.level == MANDATORY and bool(self.violations)


@dataclass
class Report:
    stack: str
    results: list[RuleResult]
    has_base: bool

    @property
    def blocking(self) -> list[RuleResult]:
        return [r for r in self.results if r.blocking]

    @property
    def advisories(self) -> list[RuleResult]:
        return [r for r in self.results if r.level == ADVISORY and r.violations]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack, "has_base": self.has_base, "passed": not self.blocking,
            "blocking": [r.name for r in self.blocking],
            "rules": [{**{k: v for k, v in asdict(r).items() if k != "findings"},
                       "findings": [asdict(f) for f in r.findings]} for r in self.results],
        }


def run_rule(rule: Rule, graph: Graph, settings: Settings, level: str | None = None) -> RuleResult:
    level = level or settings.level(rule)
    if level == DISABLED:
        return RuleResult(rule.name, rule.title, level, "disabled", note="disabled by edgefleet:policy.enforcement")
    try:
        findings = list(rule.check(graph, settings))
    except NotApplicable as exc:
        return RuleResult(rule.name, rule.title, level, "not-applicable", note=str(exc))
    status = "failed" if any(not f.unverified for f in findings) else "passed"
    return RuleResult(rule.name, rule.title, level, status, findings)


def evaluate(resources: Iterable[Mapping[str, Any]], settings: Settings) -> Report:
    """Runs every rule over a graph's records under the stack's enforcement levels."""
    unknown = sorted(set(settings.enforcement) - set(RULES_BY_NAME))
    if unknown:
        raise ValueError(f"edgefleet:policy.enforcement names no rule {', '.join(map(repr, unknown))}; rules are: {', '.join(RULES_BY_NAME)}")
    bad = {k: v for k, v in settings.enforcement.items() if v not in LEVELS}
    if bad:
        raise ValueError(f"edgefleet:policy.enforcement: {bad} - levels are {', '.join(LEVELS)}")
    graph = Graph(resources)
    return Report(settings.stack, [run_rule(rule, graph, settings) for rule in RULES], settings.base_models is not None)


def _local_exempt(rec: Mapping[str, Any], settings: Settings) -> bool:
    """The local platform is a one-machine sandbox (a directory store, a key file): exempt unless the stack is production."""
    return dig(rec, "inputs", "platform") == "local" and not settings.production


# -- model rules ----------------------------------------------------------------------------------------------------
def declared_models(g: Graph) -> list[dict]:
    """The ModelVersion records the model rules judge; a stack without models makes them not applicable."""
    models = g.of_type(MODEL)
    if not models:
        raise NotApplicable("the stack declares no models")
    return models


def check_model_signed(g: Graph, s: Settings) -> Iterator[Finding]:
    """Every ModelVersion names signing keys of this stack, and something under it actually uses each key."""
    models = declared_models(g)
    stack_keys = {r["urn"]: r for r in g.of_type(KEY)}
    for m in models:
        name = model_name(m)
        keys = dig(m, "inputs", "signingKeys")
        if keys is None:
            yield Finding(f"model {name!r}: its signingKeys input is not visible, so its signer cannot be checked", m["urn"], unverified=True)
            continue
        if not keys:
            yield Finding(f"model {name!r} names no signing key: devices would refuse it", m["urn"])
            continue
        stores = dig(m, "inputs", "stores") or []
        if len(stores) != len(keys):
            yield Finding(f"model {name!r} is published to {len(stores)} store(s) but signed with {len(keys)} key(s): every publication needs the stack's key", m["urn"])
        publishers = [r for r in g.descendants(m["urn"]) if r.get("custom")]
        for key_urn in keys:
            if is_unknown(key_urn):
                yield Finding(f"model {name!r}: a signing key reference is unknown before deploy", m["urn"], unverified=True)
                continue
            if key_urn not in stack_keys:
                yield Finding(f"model {name!r} is signed with {key_urn}, which is not a signing key declared by this stack ({len(stack_keys)} declared)", m["urn"])
                continue
            key_tree = g.subtree(key_urn)
            if publishers and not any(key_tree & set(p.get("dependencies") or []) for p in publishers):
                yield Finding(f"model {name!r} names key {stack_keys[key_urn]['name']!r} but none of its published resources "
                              f"({', '.join(p['name'] for p in publishers)}) depends on that key", m["urn"])
        signature = dig(m, "outputs", "signature", default=UNKNOWN)
        if signature in ("", None) and "signature" in (m.get("outputs") or {}):
            yield Finding(f"model {name!r} has an empty signature output", m["urn"])


_MANIFEST_SHA = re.compile(r"^sha256:\s*['\"]?([0-9a-f]{64})['\"]?\s*$", re.M)


def _sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _source_path(value: Any) -> str | None:
    """A local file a resource uploads: a path string, or a file asset as synth records it ({"path": …})."""
    if isinstance(value, Mapping):
        value = value.get("path")
    return value if isinstance(value, str) and value and not is_unknown(value) else None


def check_model_digest(g: Graph, s: Settings) -> Iterator[Finding]:
    """The digest the manifest pins is the one every publication, ring and (offline) the artifact file carries."""
    models = declared_models(g)
    for m in models:
        name = model_name(m)
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(f"model {name!r}: its manifest input is not visible, so its digest cannot be checked", m["urn"], unverified=True)
            continue
        pinned, size = manifest.get("sha256"), manifest.get("size")
        for key, want in (("sha256", pinned), ("size", size), ("version", manifest.get("version"))):
            got = dig(m, "inputs", key)
            if got is not None and not is_unknown(got) and got != want:
                yield Finding(f"model {name!r}: {key} {got!r} differs from the manifest's {want!r}", m["urn"])
        digest = dig(m, "outputs", "digest")
        if digest is not None and not is_unknown(digest) and digest != pinned:
            yield Finding(f"model {name!r}: output digest {digest} differs from the manifest's {pinned}", m["urn"])
        carriers = g.descendants(m["urn"]) + [r for r in g.of_type(RING, ROLLOUT) if dig(r, "inputs", "model") == name]
        carriers += [d for r in g.of_type(RING) if dig(r, "inputs", "model") == name for d in g.descendants(r["urn"])]
        for r in carriers:
            got = dig(r, "inputs", "sha256")
            if isinstance(got, str) and not is_unknown(got) and got != pinned:
                yield Finding(f"model {name!r}: {r['name']} ships sha256 {got[:12]}…, the manifest pins {str(pinned)[:12]}…", r["urn"])
            text = dig(r, "inputs", "manifest")
            if isinstance(text, str):
                found = _MANIFEST_SHA.search(text)
                if found and found.group(1) != pinned:
                    yield Finding(f"model {name!r}: {r['name']} carries a manifest pinning {found.group(1)[:12]}…, not {str(pinned)[:12]}…", r["urn"])
            source = _source_path(dig(r, "inputs", "source"))
            if s.project_dir and source:
                path = Path(s.project_dir) / source
                if not path.is_file():
                    yield Finding(f"model {name!r}: artifact {source} does not exist", r["urn"])
                    continue
                digest_on_disk, size_on_disk = _sha256_file(path)
                if digest_on_disk != pinned or size_on_disk != size:
                    yield Finding(f"model {name!r}: {source} has sha256 {digest_on_disk[:12]}… ({size_on_disk} bytes), the manifest pins "
                                  f"{str(pinned)[:12]}… ({size} bytes): run `edgefleet model add` to record the new file, or restore it", r["urn"])


def check_metric_floor(g: Graph, s: Settings) -> Iterator[Finding]:
    if not s.metric_floors:
        raise NotApplicable("no floors set (edgefleet:policy.metric_floors)")
    for m in g.of_type(MODEL):
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(f"model {model_name(m)!r}: manifest not visible", m["urn"], unverified=True)
            continue
        metrics = {x["name"]: x for x in manifest.get("metrics") or []}
        for metric, floor in sorted(s.metric_floors.items()):
            got = metrics.get(metric)
            where = f"model {manifest.get('name')} {manifest.get('version')}"
            if got is None:
                yield Finding(f"{where} declares no {metric!r} evaluation; the stack requires {metric} >= {floor}", m["urn"])
            elif got.get("higher_is_better", True) and got["value"] < floor:
                yield Finding(f"{where}: {metric} {got['value']} is below the stack's floor {floor} (on {got.get('dataset')})", m["urn"])
            elif not got.get("higher_is_better", True) and got["value"] > floor:
                yield Finding(f"{where}: {metric} {got['value']} is above the stack's limit {floor} (lower is better; on {got.get('dataset')})", m["urn"])


def check_metric_regression(g: Graph, s: Settings) -> Iterator[Finding]:
    if s.base_models is None:
        raise NotApplicable("needs the version each model replaces: run `edgefleet policy --base REF` "
                            "(under CrossGuard, pass base_models in the pack config, see docs/plan-and-policy.md)")
    for m in g.of_type(MODEL):
        new = manifest_of(m)
        old = s.base_models.get(model_name(m))
        if new is None or old is None or (old.get("sha256") == new.get("sha256") and old.get("version") == new.get("version")):
            continue
        news = {x["name"]: x for x in new.get("metrics") or []}
        for before in old.get("metrics") or []:
            after = news.get(before["name"])
            label = f"model {new.get('name')} {old.get('version')} -> {new.get('version')}: {before['name']}"
            if after is None:
                yield Finding(f"{label} was evaluated at {before['value']} and the new version drops it: re-evaluate on {before.get('dataset')}", m["urn"])
                continue
            if after.get("dataset") != before.get("dataset"):
                yield Finding(f"{label} measured on {after.get('dataset')!r}, the old one on {before.get('dataset')!r}: not comparable", m["urn"], unverified=True)
                continue
            worse = (before["value"] - after["value"]) if before.get("higher_is_better", True) else (after["value"] - before["value"])
            if worse > s.max_metric_regression + 1e-12:
                yield Finding(f"{label} regresses {before['value']} -> {after['value']} ({worse:+.4g} worse; the stack allows "
                              f"{s.max_metric_regression})", m["urn"])


def _model_platforms(g: Graph, m: Mapping[str, Any]) -> list[str]:
    out = []
    for urn in dig(m, "inputs", "signingKeys") or []:
        platform = dig(g.by_urn.get(urn, {}), "inputs", "platform")
        if platform and platform not in out:
            out.append(platform)
    return out


def check_breaking_io(g: Graph, s: Settings) -> Iterator[Finding]:
    """A model may need a newer agent only if the fleet runs one; a breaking I/O change must raise min_agent_version."""
    models = declared_models(g)
    for m in models:
        new = manifest_of(m)
        if new is None:
            yield Finding(f"model {model_name(m)!r}: manifest not visible", m["urn"], unverified=True)
            continue
        label = f"model {new.get('name')} {new.get('version')}"
        need = new.get("min_agent_version")
        for platform in _model_platforms(g, m):
            have = s.agent_versions.get(platform)
            if have and need and version_lt(have, need):
                yield Finding(f"{label} needs agent >= {need}; the {platform} fleet runs {have} and would refuse it: "
                              f"roll out the agent first (edgefleet:{platform}.agent_version)", m["urn"])
        old = (s.base_models or {}).get(new.get("name"))
        if old is None:
            continue
        verdict = compare_io(old, new)
        if verdict.verdict == "breaking" and not version_lt(old.get("min_agent_version", "0.0.0"), need or "0.0.0"):
            yield Finding(f"{label} changes its I/O incompatibly ({'; '.join(verdict.reasons)}) but min_agent_version stays {need} "
                          f"(was {old.get('min_agent_version')}): declare the agent version that supports the new signature "
                          f"(`edgefleet model add … --min-agent-version X.Y.Z`)", m["urn"])


def check_hardware(g: Graph, s: Settings) -> Iterator[Finding]:
    rings = g.of_type(RING)
    if not rings:
        raise NotApplicable("the stack declares no rollouts")
    models, groups = g.models(), g.groups()
    for ring in rings:
        model, group = models.get(str(dig(ring, "inputs", "model"))), groups.get(str(dig(ring, "inputs", "group")))
        manifest, hardware = manifest_of(model or {}), dig(group or {}, "inputs", "hardware")
        if manifest is None or not isinstance(hardware, Mapping):
            yield Finding(f"ring {ring['name']}: model or group facts not visible", ring["urn"], unverified=True)
            continue
        label = f"ring {ring_name(ring)!r} sends {manifest.get('name')} {manifest.get('version')} to group {group['name']!r} ({hardware.get('name')})"
        targets = manifest.get("targets") or []
        why = {t.get("name"): hardware_problems(t, hardware) for t in targets}
        if not any(not p for p in why.values()):
            reasons = "; ".join(f"{n}: {', '.join(p)}" for n, p in why.items())
            yield Finding(f"{label}, which can run none of its targets ({reasons})", ring["urn"])
        size = manifest.get("size") or 0
        for budget in ("storage_mb", "memory_mb"):
            if hardware.get(budget) and size > hardware[budget] * MIB:
                yield Finding(f"{label}: the model is {size / MIB:.1f} MB, over the group's {budget} budget of {hardware[budget]} MB", ring["urn"])


# -- rollout rules ----------------------------------------------------------------------------------------------------
def first_ring_share(g: Graph, s: Settings, rollout: Mapping[str, Any], rings: list[dict]) -> tuple[float | None, str]:
    """The first ring's share of the rollout's devices, and how it was known (None: not computable offline)."""
    name, first = rollout["name"], rings[0]
    counts, total = s.ring_devices.get(name) or {}, s.rollout_devices.get(name)
    if total and ring_name(first) in counts:
        return counts[ring_name(first)] / total, f"{counts[ring_name(first)]} of {total} devices"
    platforms = {str(dig(r, "inputs", "platform")) for r in rings}
    declared = (s.declared_ring_devices.get(next(iter(platforms))) or {}) if len(platforms) == 1 else {}
    if declared and all(ring_name(r) in declared for r in rings):
        # Rings are disjoint (a device belongs to the first ring that selects it), so their sizes add up.
        count, total = declared[ring_name(first)], sum(declared[ring_name(r)] for r in rings)
        return count / total, f"{count} of {total} devices, as declared in edgefleet:{next(iter(platforms))}.rings.<ring>.devices"
    groups = {dig(r, "inputs", "group") for r in rings}
    percent, labels = dig(first, "inputs", "percent"), dig(first, "inputs", "labels") or {}
    if len(groups) == 1 and isinstance(percent, (int, float)):
        return percent / 100, f"{percent:g}% of group {next(iter(groups))}"
    if len(groups) == 1 and not labels:
        return 1.0, f"all of group {next(iter(groups))}"
    return None, f"ring selects by labels {labels or '(its group)'}; device counts are only known at deploy"


def check_production_canary(g: Graph, s: Settings) -> Iterator[Finding]:
    if not s.production:
        raise NotApplicable("not a production stack (edgefleet:policy.production is false)")
    rollouts = g.of_type(ROLLOUT)
    if not rollouts:
        raise NotApplicable("the stack declares no rollouts")
    for ro in rollouts:
        rings = g.rings(ro)
        if not rings:
            yield Finding(f"rollout {ro['name']!r} has no rings", ro["urn"])
            continue
        first = rings[0]
        soak = dig(first, "inputs", "gate", "soak_seconds")
        if isinstance(soak, (int, float)) and soak < s.min_canary_soak_seconds:
            yield Finding(f"rollout {ro['name']!r}: first ring {ring_name(first)!r} soaks {soak:g}s, under the production minimum "
                          f"{s.min_canary_soak_seconds:g}s (edgefleet:policy.min_canary_soak_seconds)", first["urn"])
        share, how = first_ring_share(g, s, ro, rings)
        if share is None:
            yield Finding(f"rollout {ro['name']!r}: cannot verify that ring {ring_name(first)!r} is a canary: {how}", first["urn"], unverified=True)
        elif share > s.canary_max_share + 1e-12:
            yield Finding(f"rollout {ro['name']!r} starts with ring {ring_name(first)!r} covering {fmt_share(share)} ({how}); a production "
                          f"canary may cover at most {fmt_share(s.canary_max_share)} (edgefleet:policy.canary_max_share)", first["urn"])


# -- platform hardening -------------------------------------------------------------------------------------------------
def _refers_to(rec: Mapping[str, Any], target: Mapping[str, Any], prop: str) -> bool:
    if target["urn"] in (rec.get("property_dependencies") or {}).get(prop, []):
        return True
    value = dig(rec, "inputs", prop)
    names = {dig(target, "inputs", "bucket"), dig(target, "outputs", "id"), dig(target, "outputs", "bucket"), f"{target['name']}-id"}
    return isinstance(value, str) and not is_unknown(value) and value in names


def _sse_rule_ok(rules: Any) -> bool:
    rules = rules if isinstance(rules, list) else [rules]
    return any(isinstance(r, Mapping) and dig(r, "applyServerSideEncryptionByDefault", "sseAlgorithm") for r in rules)


def check_store(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    stores = g.of_type(STORE)
    for st in stores:
        if _local_exempt(st, s):
            continue
        found = True
        out = st.get("outputs") or {}
        for key, what in (("encrypted", "encrypted at rest"), ("publicAccessBlocked", "blocked from public access")):
            if out.get(key) is False:
                yield Finding(f"model store {st['name']!r} ({dig(st, 'inputs', 'platform')}) is not {what}", st["urn"])
            elif is_unknown(out.get(key)):
                yield Finding(f"model store {st['name']!r}: {key} not known before deploy", st["urn"], unverified=True)
    for b in g.of_type(*S3_BUCKETS):
        found = True
        acl = dig(b, "inputs", "acl")
        if acl in PUBLIC_S3_ACLS:
            yield Finding(f"S3 bucket {b['name']!r} has the public ACL {acl!r}", b["urn"])
        pabs = [p for p in g.of_type(S3_PUBLIC_ACCESS_BLOCK) if _refers_to(p, b, "bucket")]
        if not pabs:
            yield Finding(f"S3 bucket {b['name']!r} has no aws.s3.BucketPublicAccessBlock: declare one with all four flags true", b["urn"])
        for p in pabs:
            off = [k for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets") if dig(p, "inputs", k) is not True]
            if off:
                yield Finding(f"S3 bucket {b['name']!r}: public access block {p['name']!r} leaves {', '.join(off)} off", p["urn"])
        inline = dig(b, "inputs", "serverSideEncryptionConfiguration")
        sses = [x for x in g.of_type(*S3_SSE) if _refers_to(x, b, "bucket")]
        if not (isinstance(inline, Mapping) and _sse_rule_ok(inline.get("rule") or inline.get("rules"))) and \
                not any(_sse_rule_ok(dig(x, "inputs", "rules")) for x in sses):
            yield Finding(f"S3 bucket {b['name']!r} declares no server-side encryption (aws.s3.BucketServerSideEncryptionConfiguration "
                          f"with sse_algorithm aws:kms): say how artifacts are encrypted rather than rely on the account default", b["urn"])
    for a in g.of_type(*S3_ACLS):
        found = True
        if dig(a, "inputs", "acl") in PUBLIC_S3_ACLS:
            yield Finding(f"S3 bucket ACL {a['name']!r} grants {dig(a, 'inputs', 'acl')!r}", a["urn"])
    for p in g.of_type(S3_POLICY):
        found = True
        for stmt in _statements(dig(p, "inputs", "policy")):
            principal = stmt.get("Principal")
            public = principal == "*" or (isinstance(principal, Mapping) and "*" in _as_list(principal.get("AWS")))
            if stmt.get("Effect") == "Allow" and public and not stmt.get("Condition"):
                yield Finding(f"S3 bucket policy {p['name']!r} allows anyone ({', '.join(_as_list(stmt.get('Action')))})", p["urn"])
    for a in g.of_type(AZ_STORAGE_ACCOUNT):
        found = True
        if dig(a, "inputs", "allowBlobPublicAccess") is True:
            yield Finding(f"storage account {a['name']!r} sets allowBlobPublicAccess: true", a["urn"])
        if dig(a, "inputs", "enableHttpsTrafficOnly") is False:
            yield Finding(f"storage account {a['name']!r} allows plain HTTP (enableHttpsTrafficOnly: false)", a["urn"])
        if dig(a, "inputs", "encryption", "services", "blob", "enabled") is False:
            yield Finding(f"storage account {a['name']!r} turns blob encryption off", a["urn"])
    for c in g.of_type(AZ_BLOB_CONTAINER):
        found = True
        if dig(c, "inputs", "publicAccess") in ("Blob", "Container"):
            yield Finding(f"blob container {c['name']!r} allows anonymous reads (publicAccess: {dig(c, 'inputs', 'publicAccess')})", c["urn"])
    if not found:
        raise NotApplicable("only local-platform stores (a directory on this machine; checked when policy.production is true)"
                            if stores else "the stack declares no model stores")


def check_registry(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for r in g.of_type(ECR_REPOSITORY):
        found = True
        mutability = dig(r, "inputs", "imageTagMutability") or "MUTABLE"
        if is_unknown(mutability):
            yield Finding(f"ECR repository {r['name']!r}: tag mutability not known before deploy", r["urn"], unverified=True)
        elif mutability != "IMMUTABLE":
            yield Finding(f"ECR repository {r['name']!r} has imageTagMutability {mutability}: a pushed agent tag could be "
                          f"overwritten under devices; set IMMUTABLE", r["urn"])
    for r in g.of_type(AZ_REGISTRY):
        found = True
        if dig(r, "inputs", "adminUserEnabled") is True:
            yield Finding(f"container registry {r['name']!r} enables its admin user (a shared password): use role assignments", r["urn"])
        if dig(r, "inputs", "anonymousPullEnabled") is True:
            yield Finding(f"container registry {r['name']!r} allows anonymous pulls", r["urn"])
    if not found:
        raise NotApplicable("no ECR repositories or Azure container registries (the local fleet runs the agent from source)")


def check_signing_key(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    keys = g.of_type(KEY)
    for k in keys:
        if _local_exempt(k, s):
            continue
        found = True
        exportable = dig(k, "outputs", "exportable")
        if exportable is True:
            yield Finding(f"signing key {k['name']!r} ({dig(k, 'inputs', 'platform')}) is exportable: its private half can leave the key store", k["urn"])
        elif is_unknown(exportable):
            yield Finding(f"signing key {k['name']!r}: exportability not known before deploy", k["urn"], unverified=True)
    for k in g.of_type(*KMS_EXTERNAL_KEYS):
        found = True
        yield Finding(f"KMS key {k['name']!r} holds imported key material, a copy of which exists outside KMS: use aws.kms.Key", k["urn"])
    for k in g.of_type(KMS_KEY):
        found = True
    for k in g.of_type(AZ_KEY):
        found = True
        if dig(k, "inputs", "properties", "attributes", "exportable") is True:
            yield Finding(f"Key Vault key {k['name']!r} is exportable (properties.attributes.exportable)", k["urn"])
        if dig(k, "inputs", "properties", "releasePolicy"):
            yield Finding(f"Key Vault key {k['name']!r} has a release policy, so it can be released from the vault", k["urn"])
    if not found:
        raise NotApplicable("only local-platform keys (a key file on this machine; checked when policy.production is true)"
                            if keys else "the stack declares no signing keys")


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else ([] if value is None else [value])


def _statements(policy: Any) -> list[dict]:
    if isinstance(policy, str):
        if is_unknown(policy):
            return []
        try:
            policy = json.loads(policy)
        except json.JSONDecodeError:
            return []
    if not isinstance(policy, Mapping):
        return []
    return [s for s in _as_list(policy.get("Statement")) if isinstance(s, Mapping)]


def _wildcards(policy: Any) -> list[str]:
    out = []
    for stmt in _statements(policy):
        if stmt.get("Effect") != "Allow":
            continue
        if "NotAction" in stmt:
            out.append(f"NotAction {_as_list(stmt['NotAction'])} (allows everything else)")
        out += [a for a in _as_list(stmt.get("Action")) if isinstance(a, str) and "*" in a]
    return out


def check_iam(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for p in g.of_type(*IAM_POLICY_DOCS):
        found = True
        doc = dig(p, "inputs", "policy")
        if is_unknown(doc):
            yield Finding(f"{p['type'].split(':')[1]} {p['name']!r}: policy document not known before deploy", p["urn"], unverified=True)
        elif _wildcards(doc):
            yield Finding(f"{p['type'].split(':')[1]} {p['name']!r} allows wildcard actions: {', '.join(_wildcards(doc))}", p["urn"])
    for r in g.of_type(*RESOURCE_POLICY_DOCS):
        doc = dig(r, "inputs", "policy")
        if doc is None:
            continue        # none declared (a KMS key then gets AWS's default key policy)
        found = True
        what = f"{RESOURCE_POLICY_DOCS[r['type']]} {r['name']!r}"
        if is_unknown(doc):
            yield Finding(f"{what}: document not known before deploy", r["urn"], unverified=True)
        elif _wildcards(doc):
            yield Finding(f"{what} allows wildcard actions: {', '.join(_wildcards(doc))}", r["urn"])
    for r in g.of_type(IAM_ROLE):
        found = True
        for i, inline in enumerate(dig(r, "inputs", "inlinePolicies") or []):
            bad = _wildcards(dig(inline, "policy"))
            if bad:
                yield Finding(f"IAM role {r['name']!r} inline policy {dig(inline, 'name') or i!r} allows wildcard actions: {', '.join(bad)}", r["urn"])
        bad = _wildcards(dig(r, "inputs", "assumeRolePolicy"))
        if bad:
            yield Finding(f"IAM role {r['name']!r} trust policy allows wildcard actions: {', '.join(bad)}", r["urn"])
        for arn in dig(r, "inputs", "managedPolicyArns") or []:
            if arn in ADMIN_POLICY_ARNS:
                yield Finding(f"IAM role {r['name']!r} attaches {arn}", r["urn"])
    for a in g.of_type(*IAM_ATTACHMENTS):
        found = True
        if dig(a, "inputs", "policyArn") in ADMIN_POLICY_ARNS:
            yield Finding(f"{a['name']!r} attaches {dig(a, 'inputs', 'policyArn')}", a["urn"])
    if not found:
        raise NotApplicable("the stack declares no IAM, IoT, KMS key or resource policies")


def check_device_credentials(g: Graph, s: Settings) -> Iterator[Finding]:
    """The SAS Azure devices download models with ends on a fixed date; after it, every new model fails on every
    device while the old one keeps serving, so nothing looks wrong until a rollout stalls."""
    import datetime

    if not s.azure_sas_expiry:
        raise NotApplicable("no Azure model store SAS in this stack")
    try:
        when = datetime.date.fromisoformat(str(s.azure_sas_expiry))
    except ValueError:
        raise NotApplicable(f"edgefleet:azure.device_sas_expiry {s.azure_sas_expiry!r} is not a date (the config check names it)") from None
    today = datetime.date.fromisoformat(s.today) if s.today else datetime.datetime.now(datetime.timezone.utc).date()
    days = (when - today).days
    if days < s.sas_warning_days:
        stores = [r["urn"] for r in g.of_type(STORE) if dig(r, "inputs", "platform") == "azure"] or [None]
        yield Finding(f"the devices' SAS for the Azure model store (edgefleet:azure.device_sas_expiry) ends {when.isoformat()}, "
                      + (f"{days} day(s) away" if days >= 0 else f"{-days} day(s) ago")
                      + f": move it at least {s.sas_warning_days} days ahead and `pulumi up` so devices get the new one", stores[0])


RULES: tuple[Rule, ...] = (
    Rule("model-signed-by-stack-key", "Models are signed by the stack's signing key", MANDATORY, check_model_signed,
         description="Every ModelVersion names this stack's SigningKey for each store it publishes to, and its published "
                     "resources depend on that key; devices verify the signature before loading a model."),
    Rule("model-digest-matches-artifact", "Manifest digest matches the artifact", MANDATORY, check_model_digest,
         description="The sha256/size the manifest pins are what every publication, ring and deployment carries, "
                     "and (offline) what the artifact file on disk hashes to."),
    Rule("production-canary-ring", "Production rollouts start with a small, soaked canary", MANDATORY, check_production_canary,
         ("production", "canary_max_share", "min_canary_soak_seconds", "ring_devices", "rollout_devices", "declared_ring_devices"),
         "With policy.production, each rollout's first ring covers at most policy.canary_max_share of its devices and "
         "soaks at least policy.min_canary_soak_seconds."),
    Rule("metric-floor", "Evaluation metrics meet the stack's floors", MANDATORY, check_metric_floor, ("metric_floors",),
         "Every model declares each metric named in policy.metric_floors, at or above the floor (at or below it when lower is better)."),
    Rule("metric-regression", "Metrics do not regress from the version replaced", MANDATORY, check_metric_regression,
         ("max_metric_regression", "base_models"),
         "Against the base graph, no metric gets worse by more than policy.max_metric_regression (absolute, in the metric's units)."),
    Rule("breaking-io-needs-agent", "Breaking I/O changes declare a supporting agent", MANDATORY, check_breaking_io,
         ("agent_versions", "base_models"),
         "A model's min_agent_version is one the fleet runs; an incompatible I/O change (against the base) raises min_agent_version."),
    Rule("hardware-can-run-model", "Models go only to hardware that can run them", MANDATORY, check_hardware,
         description="Each ring's group hardware matches one of the model's targets (arch, execution provider, memory and "
                     "storage budgets) and the model fits the group's budgets."),
    Rule("store-private-encrypted", "Model stores are private and encrypted", MANDATORY, check_store,
         description="ModelStore outputs, S3 buckets (public access block, SSE, ACLs, bucket policies), Azure storage accounts and containers."),
    Rule("registry-hardened", "Registries have no admin user and immutable tags", MANDATORY, check_registry,
         description="ECR repositories are IMMUTABLE; Azure container registries have no admin user and no anonymous pull."),
    Rule("signing-key-not-exportable", "Signing keys cannot be exported", MANDATORY, check_signing_key,
         description="SigningKey outputs exportable: false; no KMS external (imported) keys; Key Vault keys not exportable and without release policy."),
    Rule("device-credentials-fresh", "Device credentials are not about to expire", ADVISORY, check_device_credentials,
         ("azure_sas_expiry", "today", "sas_warning_days"),
         "The SAS Azure devices download models with (edgefleet:azure.device_sas_expiry) ends more than "
         "sas_warning_days (30) days from now. Advisory by default so an urgent fix can still ship; loading a stack "
         "whose SAS has already expired is an error."),
    Rule("iam-no-wildcard-actions", "IAM grants no wildcard actions", MANDATORY, check_iam,
         description="IAM and IoT policies, role inline and trust policies, KMS key policies and S3/ECR resource policies "
                     "allow no action containing '*' and no Allow+NotAction (Deny statements may use wildcards), "
                     "and no AdministratorAccess-like managed policies are attached."),
)
RULES_BY_NAME = {r.name: r for r in RULES}


def crossguard_config(settings: Settings) -> dict[str, Any]:
    """A `--policy-pack-config` file for the CrossGuard pack: each rule's level and the settings it reads."""
    out: dict[str, Any] = {}
    for rule in RULES:
        entry: dict[str, Any] = {"enforcementLevel": settings.level(rule)}
        for key in rule.settings:
            value = getattr(settings, key)
            if value is not None:
                entry[key] = dict(value) if isinstance(value, Mapping) else value
        out[rule.name] = entry
    return out


def base_model_facts(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the base graph's models were: name -> manifest (what the regression and I/O rules compare against)."""
    return {model_name(r): manifest_of(r) for r in resources if r.get("type") == MODEL and manifest_of(r) is not None}
