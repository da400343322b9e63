"""AWS's part of the rules: S3, ECR, KMS, IAM and IoT policies, and what an `edgefleet:aws` section sets.

Named by components/registry.py (`policies="policies.aws"`); policies/platforms.py describes what such a module
provides. Standard library only; imports graph, engine, settings and hardening, as `policies.x` or, in the
CrossGuard pack's own virtualenv, as `x`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Mapping

if __package__:
    from .engine import Finding, NotApplicable
    from .graph import Graph, dig, is_unknown
    from .hardening import IAM_RULE, REGISTRY_RULE, SIGNING_KEY_RULE, STORE_RULE
    from .settings import Settings, cloud_settings
else:
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import Graph, dig, is_unknown  # type: ignore[no-redef]
    from hardening import IAM_RULE, REGISTRY_RULE, SIGNING_KEY_RULE, STORE_RULE  # type: ignore[no-redef]
    from settings import Settings, cloud_settings  # type: ignore[no-redef]

DEFAULT_AGENT_VERSION = "0.1.0"  # AwsConfig.agent_version's default (the agent image a stack deploys); tests/policy checks

S3_BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_SSE = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
)
S3_ACLS = ("aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2")
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ECR_REPOSITORY = "aws:ecr/repository:Repository"
KMS_KEY = "aws:kms/key:Key"
KMS_EXTERNAL_KEYS = ("aws:kms/externalKey:ExternalKey", "aws:kms/replicaExternalKey:ReplicaExternalKey")
IAM_POLICY_DOCS = (
    "aws:iam/policy:Policy",
    "aws:iam/rolePolicy:RolePolicy",
    "aws:iam/userPolicy:UserPolicy",
    "aws:iam/groupPolicy:GroupPolicy",
    "aws:iot/policy:Policy",
)
IAM_ROLE = "aws:iam/role:Role"
# Resource policies: documents attached to a resource rather than an identity, same grammar, same risk.
RESOURCE_POLICY_DOCS = {
    KMS_KEY: "KMS key policy",
    "aws:kms/keyPolicy:KeyPolicy": "KMS key policy",
    S3_POLICY: "S3 bucket policy",
    **{b: "S3 bucket policy (inline)" for b in S3_BUCKETS},
    "aws:ecr/repositoryPolicy:RepositoryPolicy": "ECR repository policy",
}
IAM_ATTACHMENTS = ("aws:iam/rolePolicyAttachment:RolePolicyAttachment", "aws:iam/policyAttachment:PolicyAttachment")

PUBLIC_S3_ACLS = ("public-read", "public-read-write", "authenticated-read")
ADMIN_POLICY_ARNS = (
    "arn:aws:iam::aws:policy/AdministratorAccess",
    "arn:aws:iam::aws:policy/PowerUserAccess",
    "arn:aws:iam::aws:policy/IAMFullAccess",
)


def stack_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return cloud_settings(config, "aws", DEFAULT_AGENT_VERSION)


def exempt(s: Settings) -> bool:
    return False


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
    """S3 buckets (public ACL, a public access block with all four flags, server-side encryption), ACLs and bucket policies."""
    found = False
    for b in g.of_type(*S3_BUCKETS):
        found = True
        acl = dig(b, "inputs", "acl")
        if acl in PUBLIC_S3_ACLS:
            yield Finding(f"S3 bucket {b['name']!r} has the public ACL {acl!r}", b["urn"])
        pabs = [p for p in g.of_type(S3_PUBLIC_ACCESS_BLOCK) if _refers_to(p, b, "bucket")]
        if not pabs:
            yield Finding(f"S3 bucket {b['name']!r} has no aws.s3.BucketPublicAccessBlock: declare one with all four flags true", b["urn"])
        for p in pabs:
            off = [
                k
                for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
                if dig(p, "inputs", k) is not True
            ]
            if off:
                yield Finding(f"S3 bucket {b['name']!r}: public access block {p['name']!r} leaves {', '.join(off)} off", p["urn"])
        inline = dig(b, "inputs", "serverSideEncryptionConfiguration")
        sses = [x for x in g.of_type(*S3_SSE) if _refers_to(x, b, "bucket")]
        if not (isinstance(inline, Mapping) and _sse_rule_ok(inline.get("rule") or inline.get("rules"))) and not any(
            _sse_rule_ok(dig(x, "inputs", "rules")) for x in sses
        ):
            yield Finding(
                f"S3 bucket {b['name']!r} declares no server-side encryption (aws.s3.BucketServerSideEncryptionConfiguration "
                f"with sse_algorithm aws:kms): say how artifacts are encrypted rather than rely on the account default",
                b["urn"],
            )
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
    if not found:
        raise NotApplicable("no S3 buckets, bucket ACLs or bucket policies")


def check_registry(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for r in g.of_type(ECR_REPOSITORY):
        found = True
        mutability = dig(r, "inputs", "imageTagMutability") or "MUTABLE"
        if is_unknown(mutability):
            yield Finding(f"ECR repository {r['name']!r}: tag mutability not known before deploy", r["urn"], unverified=True)
        elif mutability != "IMMUTABLE":
            yield Finding(
                f"ECR repository {r['name']!r} has imageTagMutability {mutability}: a pushed agent tag could be "
                f"overwritten under devices; set IMMUTABLE",
                r["urn"],
            )
    if not found:
        raise NotApplicable("no ECR repositories")


def check_signing_key(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for k in g.of_type(*KMS_EXTERNAL_KEYS):
        found = True
        yield Finding(f"KMS key {k['name']!r} holds imported key material, a copy of which exists outside KMS: use aws.kms.Key", k["urn"])
    if g.of_type(KMS_KEY):
        found = True  # an aws.kms.Key's private half never leaves KMS
    if not found:
        raise NotApplicable("no KMS keys")


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
            continue  # none declared (a KMS key then gets AWS's default key policy)
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
                yield Finding(
                    f"IAM role {r['name']!r} inline policy {dig(inline, 'name') or i!r} allows wildcard actions: {', '.join(bad)}", r["urn"]
                )
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
        raise NotApplicable("no IAM, IoT, KMS key or resource policies")


PARTS = {STORE_RULE: check_store, REGISTRY_RULE: check_registry, SIGNING_KEY_RULE: check_signing_key, IAM_RULE: check_iam}
