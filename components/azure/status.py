"""What `edgefleet status` shows for a stack on Azure, read on demand with aggregate calls only.

Per stack: the hub's configurations (`GET /configurations`, one call: also the credentials check, failing fast with
the cause and the fix). Per ring: its newest layer (`GET /configurations/{id}`: the desired version and the system
metric `targetedCount`, the ring's size as IoT Hub last evaluated it; a layer not evaluated yet costs one `COUNT()`
query over its target condition), and one twin query grouping the ring's agent module twins by the version they
report (`SELECT <r>.version AS version, COUNT() AS n FROM devices.modules WHERE moduleId = 'edgefleet-agent' AND
<r>.ring = '<rollout>.<ring>' GROUP BY <r>.version`, paged with x-ms-continuation); for a ring with drift, one more
grouping the devices held back by why (`held_query`: a held device is one not on the desired version yet, so a settled
ring costs none). Per rollout: its records in the stack's `rollouts` container (the state and the last gate verdict
with its values). So the calls grow with rings and pages, never with devices, and a watch costs at most
(1 + 3 × rings) queries and reads per read against IoT Hub's quota (20 queries a minute per S1/S2 unit): use
--interval 30 or more on a small hub.

Silent devices are those the ring's layer targets that report no version for the ring. 429 and 5xx answers are retried
with backoff honouring Retry-After, a bounded number of times (`RETRY`); a ring whose reads still fail is shown partial,
with the reason, and the whole answer is partial. The hub's key comes from the environment, never from the stack:
`EDGEFLEET_AZURE_IOTHUB_CONNECTION_STRING` (the `edgefleet-deployer` policy's), or `EDGEFLEET_AZURE_IOTHUB_KEY`.

Pure parts (`rings_of`, `version_query`, `versions_of`, `cause_of`) are separate from the calls (`read_status`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from components.azure import rest
from components.azure.configurations import HubClient, IotHubError
from components.azure.manifest import AGENT_MODULE, RING_LABEL, RingDeploymentSpec, desired_from_configuration
from components.rollout.status import CloudError, gap, latest_record, ring_row, rollout_row
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.iotedge import model_key

GATE_TYPE = "pulumi-python:dynamic/edgefleet-azure:RingGate"
CONNECTION_ENV = "EDGEFLEET_AZURE_IOTHUB_CONNECTION_STRING"
KEY_ENV = "EDGEFLEET_AZURE_IOTHUB_KEY"
ENDPOINT_ENV = "EDGEFLEET_AZURE_IOTHUB_ENDPOINT"  # another endpoint than https://<hub> (a proxy, the tests' local hub)
RETRY = rest.RetryPolicy(attempts=4, base_delay=0.5, max_delay=8.0)


# -- the stack's rings, from the declared graph (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class RolloutSpec:
    rollout: str
    model: str
    declared: str
    hub_host: str
    key_name: str
    blob_endpoint: str | None
    container: str | None
    rings: tuple[RingDeploymentSpec, ...]


def rings_of(graph: dict[str, Any]) -> list[RolloutSpec]:
    out: dict[str, RolloutSpec] = {}
    for r in graph.get("resources", []):
        if r["type"] != GATE_TYPE or r["inputs"]["rollout"] in out:
            continue
        i = r["inputs"]
        specs = tuple(sorted((RingDeploymentSpec.from_json(d) for d in i["ring_specs"]), key=lambda s: s.index))
        out[i["rollout"]] = RolloutSpec(
            i["rollout"], i["model"], i["version"], i["hub_host"], i["key_name"], i.get("blob_endpoint"), i.get("progress_container"), specs
        )
    return list(out.values())


def version_query(spec: RingDeploymentSpec) -> str:
    """One row per version the ring's agents report (a row without `version`: agents reporting none)."""
    r = f"properties.reported.models.{model_key(spec.model)}"
    return (
        f"SELECT {r}.version AS version, COUNT() AS n FROM devices.modules "
        f"WHERE moduleId = '{AGENT_MODULE}' AND {r}.ring = '{spec.key}' GROUP BY {r}.version"
    )


def held_query(spec: RingDeploymentSpec) -> str:
    """One row per reason the ring's agents give for holding a swap back (a row without `deferred`: agents holding
    none, or written before the field)."""
    r = f"properties.reported.models.{model_key(spec.model)}"
    return (
        f"SELECT {r}.deferred AS deferred, COUNT() AS n FROM devices.modules "
        f"WHERE moduleId = '{AGENT_MODULE}' AND {r}.ring = '{spec.key}' GROUP BY {r}.deferred"
    )


def held_of(rows: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        if isinstance(why := row.get("deferred"), str) and why:
            out[why] = out.get(why, 0) + int(row.get("n") or 0)
    return out


def versions_of(rows: list[dict[str, Any]]) -> dict[str | None, int]:
    out: dict[str | None, int] = {}
    for row in rows:
        v = row.get("version")
        key = str(v) if v is not None else None
        out[key] = out.get(key, 0) + int(row.get("n") or 0)
    return out


def cause_of(err: IotHubError, hub: str) -> tuple[str, str, str]:
    """(kind, problem, fix) for an IoT Hub call that failed after its retries."""
    if err.status == 401:
        return (
            "invalid",
            f"IoT Hub {hub} refused the key ({err.problem})",
            f"set {CONNECTION_ENV} to the current `edgefleet-deployer` connection string ({_show(hub)})",
        )
    if err.status == 403:
        return (
            "denied",
            f"the key may not read {hub} ({err.problem})",
            "use the `edgefleet-deployer` policy (RegistryRead) or one with RegistryRead",
        )
    if err.status == 429:
        return (
            "throttled",
            f"IoT Hub {hub} throttled the reads ({err.problem})",
            "wait a minute and run it again, or watch with a longer --interval (20 queries a minute per S1 unit)",
        )
    if err.status is not None and err.status >= 500:
        return (
            "unavailable",
            f"IoT Hub {hub} answered {err.status} ({err.problem})",
            "IoT Hub had a service error; run it again in a minute (Azure status page)",
        )
    if err.status is None:
        return "unreachable", f"cannot reach IoT Hub {hub} ({err.problem})", "check the network, proxy settings and the hub's name"
    return "failed", f"IoT Hub {hub}: {err.problem}", err.fix or "see the message"


def _show(hub: str) -> str:
    return f"`az iot hub connection-string show -n {hub.split('.')[0]} --policy-name edgefleet-deployer -o tsv`"


def credentials(hub_host: str, key_name: str, environ: dict[str, str] | os._Environ[str]) -> tuple[str, str, str]:
    """(host, policy name, key) from the environment, or a CloudError saying how to set them."""
    text = environ.get(CONNECTION_ENV)
    if text:
        fields = dict(part.split("=", 1) for part in text.split(";") if "=" in part)
        if {"HostName", "SharedAccessKeyName", "SharedAccessKey"} <= set(fields):
            return fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"]
        raise CloudError(
            CONNECTION_ENV,
            "not an IoT Hub connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)",
            f"set it from {_show(hub_host)}",
            "invalid",
        )
    if environ.get(KEY_ENV):
        return hub_host, key_name, environ[KEY_ENV]
    raise CloudError(
        f"IoT Hub {hub_host}",
        f"no key to read the hub with ({CONNECTION_ENV} and {KEY_ENV} are unset)",
        f'export {CONNECTION_ENV}="$({_show(hub_host).strip("`")})"',
        "credentials",
    )


# -- the wiring ---------------------------------------------------------------------------------------------------------
def read_status(
    project_dir: Path,
    cfg: Any,
    source: str,
    stack: str,
    graph: dict[str, Any],
    client: Any = None,
    progress: Any = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    specs = rings_of(graph)
    if not specs:
        return {"rings": [], "rollouts": [], "declared": [], "gaps": []}
    first = specs[0]
    if client is None:
        host, key_name, key = credentials(first.hub_host, first.key_name, os.environ)
        policy = rest.RetryPolicy(RETRY.attempts, RETRY.base_delay, RETRY.max_delay, sleep=sleep)
        client = HubClient(host, key_name, key, os.environ.get(ENDPOINT_ENV), policy=policy, timeout=20.0)
    hub = client.host
    try:
        layers = client.list_configurations()
    except IotHubError as err:
        kind, problem, fix = cause_of(err, hub)
        raise CloudError(f"IoT Hub {hub} (stack {stack})", problem, fix, kind) from None
    gaps: list[dict[str, Any]] = []
    rings: list[dict[str, Any]] = []
    rollouts: list[dict[str, Any]] = []
    for spec in specs:
        rollouts.append(rollout_row(platform="azure", rollout=spec.rollout, declared=spec.declared, record=_record(spec, progress, gaps)))
        for ring in spec.rings:
            rings.append(_ring(client, hub, ring, layers, gaps))
    return {"rings": rings, "rollouts": rollouts, "declared": [], "gaps": gaps}


def _failed(gaps: list[dict[str, Any]], err: IotHubError, hub: str, where: str, what: str) -> None:
    _, problem, fix = cause_of(err, hub)
    gaps.append(gap("azure", where, f"{what}: {problem}", fix))


def _ring(client: Any, hub: str, spec: RingDeploymentSpec, layers: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> dict[str, Any]:
    where = f"ring {spec.key} (IoT Hub {hub})"
    mine = sorted(
        (c for c in layers if (c.get("labels") or {}).get(RING_LABEL) == spec.key), key=lambda c: (c.get("createdTimeUtc") or "", c["id"])
    )
    partial = False
    desired, rollback, devices = None, False, None
    try:
        cfg = client.get_configuration(mine[-1]["id"]) if mine else None
        if cfg is not None:
            d = desired_from_configuration(cfg, spec.model)
            desired, rollback = (d.version, d.is_rollback) if d else (None, False)
            targeted = ((cfg.get("systemMetrics") or {}).get("results") or {}).get("targetedCount")
            devices = int(targeted) if targeted is not None else None
        if devices is None:  # no layer, or IoT Hub has not evaluated it yet (every five minutes)
            rows = client.query(f"SELECT COUNT() AS n FROM devices WHERE {spec.target_condition}")
            devices = int(rows[0].get("n", 0)) if rows else 0
    except IotHubError as err:
        _failed(gaps, err, hub, where, "desired version and size not read")
        partial = True
    reported = None
    try:
        reported = versions_of(client.query(version_query(spec)))
    except IotHubError as err:
        _failed(gaps, err, hub, where, "devices per version not read")
        partial = True
    held: dict[str, int] | None = {} if reported is not None else None
    if reported is not None and any(n for v, n in reported.items() if v != desired):
        try:
            held = held_of(client.query(held_query(spec)))
        except IotHubError as err:
            _failed(gaps, err, hub, where, "devices held back not read")
            held, partial = None, True
    return ring_row(
        platform="azure",
        rollout=spec.rollout,
        ring=spec.ring,
        desired=desired,
        rollback=rollback,
        devices=devices,
        reported=reported,
        partial=partial,
        held=held,
    )


def _record(spec: RolloutSpec, progress: Any, gaps: list[dict[str, Any]]) -> dict[str, Any] | None:
    where = f"rollout records {spec.blob_endpoint or ''}{spec.container or 'rollouts'}/{spec.rollout}/"
    try:
        if progress is None:
            from components.azure.hub import BlobProgressStore

            if not (spec.blob_endpoint and spec.container):
                raise RuntimeError("the stack declares no rollout-record container")
            progress = BlobProgressStore(spec.blob_endpoint, spec.container)
        record = latest_record(progress.list(spec.rollout))
    except Exception as exc:  # noqa: BLE001 - records are one part of the answer: a gap, never a crash
        gaps.append(
            gap(
                "azure",
                where,
                f"rollout {spec.rollout}'s state and last gate verdict not read ({type(exc).__name__}: {exc})",
                "sign in with an identity that has Storage Blob Data Reader on the stack's storage account (`az login`); "
                "azure-identity and azure-storage-blob must be installed",
            )
        )
        return None
    return dict(record) if record is not None else None


def read_history(project_dir: Path, cfg: Any, source: str, stack: str) -> list[dict[str, Any]]:
    raise EdgefleetError(
        source,
        "history reads the local hub; this stack's rollout records live in its cloud store",
        "for cloud stacks, `edgefleet status --stack` shows each rollout's state and last gate verdict; "
        "past records are in the `rollouts` container of the stack's storage account",
    )
