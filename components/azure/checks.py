"""Azure-specific rules over a stack's config. Pure, so `edgefleet policy` and the CrossGuard pack can call them.

`check_stack` runs with the config's validation; `check_azure_manifests` (which also reads the models'
manifests) runs when AzurePlatform is created. Both run before anything is declared, so a bad stack fails naming
the stack file and key.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from components.azure.manifest import label_problems
from components.stack import StackConfig
from edgefleet_agent.contract.signing import standin_public_key_pem

METRICS_INTERVAL_SECONDS = 300  # IoT Hub evaluates deployments and their metrics about every five minutes
MIN_SAS_DAYS = 30  # time to notice, rotate and let every device pick up a new base deployment


def check_stack(cfg: StackConfig, today: datetime.date | None = None) -> list[tuple[str, str, str]]:
    """(key, problem, fix) for each rule an Azure stack breaks. `today` (UTC) is for tests."""
    out: list[tuple[str, str, str]] = []
    if "azure" not in cfg.platforms:
        return out
    if cfg.azure is not None:
        out += sas_expiry_problems(cfg.azure.device_sas_expiry, today)
    for i, g in enumerate(cfg.groups):
        if cfg.group_platform(g) != "azure":
            continue
        out += label_problems(dict(g.labels), f"groups[{i}].labels")
        for j, d in enumerate(g.devices):
            if "'" in d or "\\" in d:
                out.append(
                    (f"groups[{i}].devices[{j}]", f"device id {d!r} cannot be quoted in a target condition", "use the device's IoT Hub id")
                )
    groups = {g.name: g for g in cfg.groups}
    for i, r in enumerate(cfg.rollouts):
        platforms = {cfg.group_platform(groups[ring.group]) for ring in r.rings if ring.group in groups}
        if "azure" not in platforms:
            continue
        if len(platforms) > 1:
            out.append(
                (
                    f"rollouts[{i}].rings",
                    f"rollout {r.name!r} has rings on {sorted(platforms)}; a rollout's gates drive one platform",
                    "declare one rollout per platform (the same model may be in several)",
                )
            )
            continue
        for j, ring in enumerate(r.rings):
            key = f"rollouts[{i}].rings[{j}]"
            out += label_problems(dict(ring.labels), f"{key}.labels")
            if ring.gate.deadline_seconds < 2 * METRICS_INTERVAL_SECONDS:
                out.append(
                    (
                        f"{key}.gate.deadline_seconds",
                        f"{ring.gate.deadline_seconds:g}s is shorter than two IoT Hub metric evaluations "
                        f"({2 * METRICS_INTERVAL_SECONDS}s); healthy rings would fail before their devices are counted",
                        f"use at least {2 * METRICS_INTERVAL_SECONDS} for rings on Azure",
                    )
                )
            for k, earlier in enumerate(r.rings[:j]):
                if earlier.group == ring.group and set(earlier.labels.items()) <= set(ring.labels.items()):
                    out.append(
                        (
                            f"{key}.labels",
                            f"ring {ring.name!r} selects only devices that ring {earlier.name!r} (rings[{k}]) already took; "
                            "rings are disjoint, so it would be empty",
                            "give the ring a twin tag of its own, such as {ring: early}",
                        )
                    )
                    break
    return out


def sas_expiry_problems(expiry: str, today: datetime.date | None = None) -> list[tuple[str, str, str]]:
    """Devices download models with a SAS that ends on `expiry`; an expired one breaks every download, and only
    surfaces on devices. One that is merely close is left to the advisory `device-credentials-fresh` policy."""
    today = today or datetime.datetime.now(datetime.timezone.utc).date()
    try:
        when = datetime.date.fromisoformat(expiry)
    except ValueError:
        return []  # AzureConfig already names the bad date
    days = (when - today).days
    if days > 0:
        return []  # close to expiry is the `device-credentials-fresh` policy's warning, so urgent fixes still ship
    problem = (
        f"{expiry} is in the past: devices would get an already-expired SAS for the model store"
        if days < 0
        else f"{expiry} is today: devices would get a SAS for the model store that expires within hours"
    )
    soonest = today + datetime.timedelta(days=MIN_SAS_DAYS)
    return [
        (
            "azure.device_sas_expiry",
            problem,
            f"set a date at least {MIN_SAS_DAYS} days ahead (on or after {soonest.isoformat()}), e.g. "
            f"{(today + datetime.timedelta(days=365)).isoformat()}, and move it forward again before it comes close",
        )
    ]


# -- the manifests a stack would deploy, before anything is declared ------------------------------------------------
# Stand-ins as long as the real names can be (registry 50, storage account 24 characters), so a manifest
# that fits here fits once the real names are known.
STANDIN_REGISTRY = "e" * 50 + ".azurecr.io"
STANDIN_ACCOUNT = "e" * 24
STANDIN_KEY_ID = "sha256:" + "0" * 64


def check_azure_manifests(cfg: StackConfig, project_dir: Path, registry_password: bool = False) -> list[tuple[str, str, str]]:
    """(key, problem, fix) for each manifest of the stack that IoT Hub or IoT Edge would refuse: every group's base
    deployment and every ring's effective manifest (base plus the layers of every rollout on the group), built with
    stand-ins for what only a deployment produces (registry, key, signature, URIs), against the vendor schemas, the
    twin limits and the agent twin's contract. Reads the models' manifests, which the agent twin carries (chunked)."""
    from components.azure import manifest as mf
    from components.rollout.engine import rollout_id
    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.contract.signing import Envelope
    from edgefleet_agent.contract.state import DesiredModel

    az = cfg.azure
    if "azure" not in cfg.platforms or az is None:
        return []
    out: list[tuple[str, str, str]] = []

    def refuse(key: str, what: str, problems: list) -> None:
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            out.append((key, f"the IoT Edge manifest for the {what} is invalid: {problems[0]}{more}", problems[0].fix))

    agent = mf.AgentModule(
        image=f"{STANDIN_REGISTRY}/{mf.AGENT_REPOSITORY}:{az.agent_version}",
        agent_version=az.agent_version,
        env={"EDGEFLEET_TRUSTED_KEY_ID": STANDIN_KEY_ID},
    )
    creds = (
        {"username": "edgefleet-devices", "password": "${secret:registryPassword}", "address": STANDIN_REGISTRY}
        if registry_password
        else None
    )
    bases: dict[str, tuple[int, dict]] = {}
    for i, g in enumerate(cfg.groups):
        if cfg.group_platform(g) == "azure":
            base = mf.base_manifest(
                agent=agent,
                runtime=az.edge_runtime,
                agent_schema=az.edge_agent_schema,
                hub_schema=az.edge_hub_schema,
                trust={"keyId": STANDIN_KEY_ID, "publicKeyPem": standin_public_key_pem()},
                store_sas="${secret:storeSas}",
                registry=creds,
            )
            refuse(f"groups[{i}]", f"base deployment of group {g.name!r}", mf.check_manifest(base))
            bases[g.name] = (i, base)
    if out:
        return out
    models = {}
    for ref in cfg.models:
        mdir = ModelDir(Path(project_dir) / ref.path)
        if mdir.exists():
            m = mdir.load()
            models[m.name] = (m, mdir.manifest_bytes().decode())
    signature = Envelope(key_id=STANDIN_KEY_ID, signature=bytes(72)).to_bytes().decode()
    layers: dict[str, list[dict]] = {}
    for i, r in enumerate(cfg.rollouts):
        groups = [next((g for g in cfg.groups if g.name == ring.group), None) for ring in r.rings]
        if not groups or any(g is None or g.name not in bases for g in groups) or r.model not in models:
            continue
        m, text = models[r.model]
        d = DesiredModel(
            model=m.name,
            version=m.version,
            sha256=m.sha256,
            size=m.size,
            manifest=text,
            signature=signature,
            uri=f"https://{STANDIN_ACCOUNT}.blob.core.windows.net/models/{m.name}/{m.sha256}.onnx",
        )
        d = DesiredModel(**{**d.__dict__, "variants": mf.desired_variants(m, d.uri)})
        d = DesiredModel(**{**d.__dict__, "rollout": rollout_id(r.name, d)})
        conditions = mf.ring_conditions(
            [(dict(g.labels), list(g.devices), dict(ring.labels)) for g, ring in zip(groups, r.rings, strict=True)]
        )
        first_in_group: set[str] = set()
        for j, (g, ring) in enumerate(zip(groups, r.rings, strict=True)):
            spec = mf.RingDeploymentSpec(
                rollout=r.name,
                ring=ring.name,
                index=j,
                model=m.name,
                target_condition=conditions[j],
                priority=az.deployment_priority + 1,
                agent=agent,
                agent_schema=az.edge_agent_schema,
                download_cap=ring.download_cap(g),
                windows=g.windows_document(),
            )
            layer = mf.ring_configuration(spec, d)["content"]["modulesContent"]
            refuse(
                f"rollouts[{i}].rings[{j}]",
                f"ring {ring.name!r} of rollout {r.name!r}",
                mf.check_manifest(mf.effective_manifest(bases[g.name][1], layer)),
            )
            if g.name not in first_in_group:  # a device is in one ring of a rollout: one layer per rollout
                first_in_group.add(g.name)
                layers.setdefault(g.name, []).append(layer)
    for name, group_layers in layers.items():
        if len(group_layers) > 1:
            i, base = bases[name]
            refuse(
                f"groups[{i}]",
                f"devices of group {name!r} with every rollout's layer applied",
                mf.check_manifest(mf.effective_manifest(base, *group_layers)),
            )
    return out
