"""Cross-field rules for stacks with AWS groups. Pure (no Pulumi, no boto3), so `check_stack` and the policy
pack can call them; AwsPlatform runs them before it declares anything.

Each problem is (key, problem, fix) with the key as it is written in the stack file under `edgefleet:`.
"""

from __future__ import annotations

import re
from pathlib import Path

from components.stack import PROJECT, StackConfig

# Thing attribute names allow [a-zA-Z0-9_.,@/:#-]; fleet-indexing query terms need plain tokens, so labels that
# select AWS devices keep to letters, digits, '_', '.' and '-'.
LABEL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
THING_NAME_RE = re.compile(r"^[A-Za-z0-9:_-]{1,128}$")  # the IoT API's ThingName


def aws_groups(cfg: StackConfig) -> set[str]:
    return {g.name for g in cfg.groups if cfg.group_platform(g) == "aws"}


def check_stack(cfg: StackConfig) -> list[tuple[str, str, str]]:
    if cfg.aws is None:
        return []
    out: list[tuple[str, str, str]] = []
    on_aws = aws_groups(cfg)
    shipped = sorted({r.model for r in cfg.rollouts if any(ring.group in on_aws for ring in r.rings)})
    if len(shipped) > 10 and cfg.aws.manage_fleet_indexing:
        out.append(
            (
                "edgefleet:rollouts",
                f"{len(shipped)} models are rolled out on AWS, but fleet indexing indexes at most 10 named shadows, and "
                "`edgefleet status` counts devices per version through each model's status shadow (edgefleet-<model>)",
                "split the models over two stacks of separate accounts or regions, or ship at most 10 models per stack",
            )
        )
    groups = {g.name: g for g in cfg.groups}
    for i, g in enumerate(cfg.groups):
        if g.name not in on_aws:
            continue
        if g.labels and g.devices:
            out.append(
                (
                    f"groups[{i}]",
                    f"group {g.name!r} lists both labels and devices; on AWS a group is either a dynamic "
                    "thing group (labels) or a static one (device ids)",
                    "keep labels (devices join when they register) or devices (things registered before `pulumi up`), not both",
                )
            )
        bad = [d for d in g.devices if not THING_NAME_RE.match(d)]
        if bad:
            out.append(
                (
                    f"groups[{i}].devices",
                    f"not IoT thing names: {', '.join(map(repr, bad))}",
                    "list the names the things are registered under: letters, digits, ':', '_' and '-', at most 128",
                )
            )
        twice = sorted({d for d in g.devices if g.devices.count(d) > 1})
        if twice:
            out.append((f"groups[{i}].devices", f"listed more than once: {', '.join(map(repr, twice))}", "list each device once"))
        for k, v in g.labels.items():
            if not (LABEL_RE.match(k) and LABEL_RE.match(v)):
                out.append(
                    (
                        f"groups[{i}].labels",
                        f"label {k}: {v} cannot be a fleet-indexing query term",
                        "use letters, digits, '_', '.' and '-' in label keys and values",
                    )
                )
    ring_names: set[str] = set()
    for i, r in enumerate(cfg.rollouts):
        aws_rings = [(j, ring) for j, ring in enumerate(r.rings) if ring.group in on_aws]
        for j, ring in aws_rings:
            key = f"rollouts[{i}].rings[{j}]"
            ring_names.add(ring.name)
            policy = cfg.aws.rings.get(ring.name)
            if policy is None:
                out.append(
                    (
                        "aws.rings",
                        f"no entry for ring {ring.name!r} ({key}): AWS needs the devices the ring must reach",
                        f"add `{ring.name}: {{devices: N}}` under {PROJECT}:aws.rings",
                    )
                )
            elif policy.abort_min_executed > policy.devices:
                out.append(
                    (
                        f"aws.rings.{ring.name}.abort_min_executed",
                        f"{policy.abort_min_executed} exceeds the ring's {policy.devices} devices, so its job could never abort",
                        f"set abort_min_executed to at most {policy.devices}",
                    )
                )
            for k, v in ring.labels.items():
                if not (LABEL_RE.match(k) and LABEL_RE.match(v)):
                    out.append(
                        (
                            f"{key}.labels",
                            f"label {k}: {v} cannot be a fleet-indexing query term",
                            "use letters, digits, '_', '.' and '-' in label keys and values",
                        )
                    )
            group = groups[ring.group]
            clash = {k for k, v in ring.labels.items() if k in group.labels and group.labels[k] != v}
            if clash:
                out.append(
                    (
                        f"{key}.labels",
                        f"ring {ring.name!r} asks for {', '.join(f'{k}: {ring.labels[k]}' for k in sorted(clash))} "
                        f"but group {group.name!r} requires {', '.join(f'{k}: {group.labels[k]}' for k in sorted(clash))}: it selects no devices",
                        "drop the conflicting ring label",
                    )
                )
            for jj, earlier in aws_rings:
                if jj >= j:
                    break
                if _implied(earlier, ring, groups):
                    out.append(
                        (
                            key,
                            f"ring {ring.name!r} selects no devices: ring {earlier.name!r} before it already takes every "
                            f"device it would select (rings are disjoint, a device belongs to the first ring that selects it)",
                            f"give ring {earlier.name!r} a label of its own, such as ring: {earlier.name}",
                        )
                    )
                    break
        if aws_rings and not any(o[0].startswith(f"rollouts[{i}]") or o[0].startswith("groups") for o in out):
            out.extend(_query_lengths(r, i, groups))
    for name in sorted(set(cfg.aws.rings) - ring_names):
        out.append(
            (
                f"aws.rings.{name}",
                f"no AWS ring is named {name!r} (rings: {', '.join(sorted(ring_names)) or 'none'})",
                "fix the ring name or remove the entry",
            )
        )
    return out


def _query_lengths(rollout, i: int, groups) -> list[tuple[str, str, str]]:
    """AWS IoT refuses a fleet-indexing query of more than 12 terms, and each ring's query excludes every ring
    before it, so a long rollout outgrows the limit at `pulumi up`; caught here instead."""
    from components.aws.plan import MAX_QUERY_TERMS, Naming, query_terms, ring_query

    for j in range(len(rollout.rings)):
        terms = query_terms(ring_query(rollout, j, groups, "thing-type", Naming("stack")))
        if terms > MAX_QUERY_TERMS:
            return [
                (
                    f"rollouts[{i}].rings[{j}]",
                    f"ring {rollout.rings[j].name!r} needs a fleet-indexing query of {terms} terms "
                    f"(its group's and its own labels, and one per earlier ring it excludes); AWS IoT allows at most {MAX_QUERY_TERMS}",
                    "use fewer rings, or give the group fewer labels; split a long rollout into two rollouts over two groups",
                )
            ]
    return []


def check_aws_recipes(cfg: StackConfig, project_dir: Path, stack: str) -> list[tuple[str, str, str]]:
    """(key, problem, fix) for each Greengrass recipe the stack would create that the GDK schema rejects, built
    with stand-ins for what only `pulumi up` produces (the artifact URI, the KMS signature, the image URL, the
    public key). The real recipes are built inside Output applies, which run only after the upload and the
    signature (and never in a preview): this is what refuses a bad one before anything is declared."""
    from components.aws.plan import Naming, model_key
    from components.aws.recipes import agent_recipe, model_recipe, recipe_errors
    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.contract.signing import Envelope, standin_public_key_pem

    if cfg.aws is None:
        return []
    naming = Naming(stack)
    on_aws = aws_groups(cfg)
    shipped = {r.model for r in cfg.rollouts if any(ring.group in on_aws for ring in r.rings)}
    signature = Envelope("sha256:" + "0" * 64, bytes(72)).to_bytes().decode()  # a DER P-256 signature's size
    image = f"123456789012.dkr.ecr.{cfg.aws.region}.amazonaws.com/{naming.repository}:{cfg.aws.agent_version}"
    out = []
    for i, ref in enumerate(cfg.models):
        mdir = ModelDir(project_dir / ref.path)
        if not mdir.exists():
            continue  # the program names a missing manifest itself
        manifest = mdir.load()
        if manifest.name not in shipped:
            continue
        text = mdir.manifest_bytes().decode("utf-8")
        model_c, agent_c = naming.model_component(manifest.name), naming.agent_component
        uri = f"s3://{'b' * 63}/{model_key(manifest.name, manifest.sha256)}"
        for what, recipe in (
            (
                "model",
                model_recipe(
                    model_c,
                    manifest,
                    text,
                    signature,
                    uri,
                    agent_c,
                    cfg.aws.agent_version,
                    {v.kind: f"s3://{'b' * 63}/{model_key(manifest.name, v.sha256)}" for v in manifest.variants},
                    [g.hardware for g in cfg.groups if g.name in on_aws],
                ),
            ),
            ("agent", agent_recipe(agent_c, cfg.aws.agent_version, image, cfg.aws.metric_namespace, standin_public_key_pem())),
        ):
            errors = recipe_errors(recipe)
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                out.append(
                    (
                        f"models[{i}]",
                        f"the Greengrass {what} component recipe for {manifest.name} {manifest.version} does not "
                        f"validate against the GDK recipe schema: {errors[0]}{more}",
                        "check the model's version and name in its model.yaml, and edgefleet:aws.agent_version",
                    )
                )
    return out


def _implied(earlier, ring, groups) -> bool:
    """Every device `ring` would select is one `earlier` selects too (its query terms are a subset of the ring's):
    rings are disjoint, so `ring` would get nobody. Across groups as well, e.g. {site: a} then {site: a, hw: x}."""
    from components.aws.plan import Naming, ring_terms

    if ring.group not in groups or earlier.group not in groups:
        return False
    naming = Naming("stack")
    return set(ring_terms(earlier, groups, "thing-type", naming)) <= set(ring_terms(ring, groups, "thing-type", naming))
