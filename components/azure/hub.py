"""`FleetHub` over IoT Hub: a ring is its layered deployment, its health is the deployment's metrics.

- desired: the model set by the newest configuration labelled with the ring's key.
- set_desired: creates the layer for that model, then deletes the ring's other layers (the no-gap ordering of
  configurations.apply_configuration); None removes the ring's layers, leaving the base deployment.
- observe: for the ring's current configuration, counts come from the configuration itself. System metrics
  (Microsoft's definitions): targetedCount, devices the target condition selects, is the ring's size;
  appliedCount, those IoT Hub has applied the deployment to; reportedSuccessfulCount / reportedFailedCount,
  applied devices whose IoT Edge runtime reported the current desired state as applied (lastDesiredStatus 200)
  or not. Custom metrics `adopted`, `failed`, `reporting` are queries over the agent module's reported
  properties. A device the deployment is not applied to yet has reported nothing for it: it is pending (counted
  in neither adopted nor failed) until the gate's deadline. A runtime failure (reportedFailedCount > 0) is a
  failure of the ring: its devices are read with the configuration's own "reportedFailedCount" query, named with
  the runtime's status in the report, and counted once with devices whose agent reported the failure. IoT Hub
  evaluates metrics about every five minutes, so a configuration without results yet is waited for rather than
  read as an empty ring. Inference statistics of adopted devices and a sample of failing devices come from a
  live twin query. For a version the ring is no longer set to (the engine asks how many devices still run a
  rolled-back version) the counts come from live queries as well.
- offenders: the devices behind a metric, one bounded query per metric (TOP 20, rates computed here, worst first),
  and only for a metric that can fail the gate: IoT Hub allows 20 queries a minute per S1/S2 unit, and the gate polls
  every `poll_seconds`. With the ring's gates known (`run_gate`), that is a metric whose ring-wide value breaches
  its threshold, so a healthy ring costs no query; without them, one that is above zero.
- quality: for a ring whose gate has quality criteria, one aggregate twin query per side sums what the adopted agents
  reported of their requests (`quality` in contract/iotedge.py): the count of classified requests, class counts for
  PROBED_CLASSES indices and "other" (predictions of classes beyond them count as "other"), the confidence bins, a
  shadowed candidate's counts and labelled counts; IoT Hub's query language sums and averages but cannot merge
  histograms, so a side's p50 is the mean of its devices' own medians. `summarize` runs the same query over the control
  group (the later rings' devices on the previous version). One more query, TOP 20 devices' own summaries, lets a failed
  quality gate name devices (IoT Hub has no ORDER BY: any 20 matching devices, ranked here).
- variants: for a version of several builds (`DesiredModel.variants`), agents report the build they serve (`variant`,
  contract/iotedge.py) and each build's devices are judged on their own, so that a bad int8 build cannot hide behind
  good fp32 devices: one GROUP BY query counts the ring's adopted and failed devices per build, and for a ring of
  several builds each build costs one health query (its offender queries only when it breaches a metric) and, where
  the gate compares quality, one quality query (its devices' own summaries only once a failed gate names them).
  `summarize_variants` does the same for the control group (one GROUP BY, one quality query per build). Only the
  version's own builds are read (at most three), so the queries grow with builds, never with devices; a version of
  one build costs none.
- progress: JSON blobs next to the models (container `rollouts`), so any machine can resume a rollout.

`run_gate` is what the RingGate dynamic provider calls under `pulumi up`: the same engine as the local fleet, each ring
planned with its spec's download cap and maintenance windows (a ring's deadline pauses while its window is closed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
import urllib.parse
from dataclasses import replace
from typing import Any, Mapping, Protocol

from components.azure.configurations import HubClient, apply_configuration
from components.azure.manifest import (
    AGENT_MODULE,
    RING_LABEL,
    RingDeploymentSpec,
    desired_from_configuration,
    metric_where,
    ring_configuration,
)
from components.props import ProviderInputError, RingGateProps, variant_kinds
from components.rollout.driver import GateInputs
from components.rollout.driver import run_gate as drive_gate
from components.rollout.gate import THRESHOLDS, measure
from components.rollout.hub import WallClock
from components.rollout.progress import Progress, rollout_id
from components.rollout.quality import ShadowSummary, Summary
from components.rollout.types import OFFENDER_METRICS, OFFENDERS_PER_METRIC, Lazy, RingObservation, RingTarget
from edgefleet_agent.contract.iotedge import class_key, model_key
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.telemetry import CONFIDENCE_BINS, OTHER

FAILURE_SAMPLE = 20
PROBED_CLASSES = 32  # class indices summed by name in a ring's quality query; the rest of the predictions are "other"
QUALITY_SAMPLE = 20  # devices whose own quality summary a ring with quality criteria reads, to name offenders
# Microsoft's "Reporting Failure" system metric, for a hub that returns no queries with the configuration.
RUNTIME_FAILED_QUERY = (
    "SELECT deviceId FROM devices.modules WHERE moduleId = '$edgeAgent' AND configurations.[[{id}]].status = 'Applied' "
    "AND properties.desired.$version = properties.reported.lastDesiredVersion "
    "AND properties.reported.lastDesiredStatus.code != 200"
)
# Per offender metric: the reported property its value comes from, and the divisor a rate needs.
OFFENDER_QUERIES = {
    "error_rate": ("errors", ("inferences",)),
    "invalid_output_share": ("invalidOutputs", ("inferences",)),
    "p99_latency_ms": ("p99LatencyMs", ()),
}


# -- progress -----------------------------------------------------------------------------------------------------
class ProgressStore(Protocol):
    def load(self, rollout_id: str) -> dict[str, Any] | None: ...

    def save(self, rollout_id: str, progress: dict[str, Any]) -> None: ...

    def list(self, rollout: str) -> list[dict[str, Any]]: ...


class MemoryProgressStore:
    def __init__(self) -> None:
        self.records: dict[str, str] = {}

    def load(self, rollout_id: str) -> dict[str, Any] | None:
        text = self.records.get(rollout_id)
        return json.loads(text) if text else None

    def save(self, rollout_id: str, progress: dict[str, Any]) -> None:
        self.records[rollout_id] = json.dumps(progress)

    def list(self, rollout: str) -> list[dict[str, Any]]:
        return [json.loads(t) for rid, t in sorted(self.records.items()) if rid.startswith(rollout + "@")]


class BlobProgressStore:
    """Progress records as blobs `<rollout>/<rollout id>.json`, written with the deploying identity (Entra ID)."""

    def __init__(self, blob_endpoint: str, container: str, credential: Any = None) -> None:
        self.blob_endpoint = blob_endpoint
        self.container = container
        self._credential = credential
        self._client: Any = None

    def _container(self) -> Any:
        if self._client is None:
            from azure.storage.blob import ContainerClient  # deploy-time dependency, see docs/azure.md

            from components.azure.signer import default_credential

            self._client = ContainerClient(self.blob_endpoint, self.container, credential=self._credential or default_credential())
        return self._client

    @staticmethod
    def _name(rollout_id: str) -> str:
        return f"{rollout_id.split('@', 1)[0]}/{urllib.parse.quote(rollout_id, safe='@+')}.json"

    def load(self, rollout_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return json.loads(self._container().download_blob(self._name(rollout_id)).readall())
        except ResourceNotFoundError:
            return None

    def save(self, rollout_id: str, progress: dict[str, Any]) -> None:
        from azure.storage.blob import ContentSettings

        self._container().upload_blob(
            self._name(rollout_id),
            json.dumps(progress).encode(),
            overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )

    def list(self, rollout: str) -> list[dict[str, Any]]:
        out = []
        for blob in self._container().list_blobs(name_starts_with=f"{rollout}/"):
            out.append(json.loads(self._container().download_blob(blob.name).readall()))
        return out


# -- the hub ------------------------------------------------------------------------------------------------------
class AzureHub:
    def __init__(
        self,
        client: HubClient,
        specs: dict[str, RingDeploymentSpec],
        progress: ProgressStore,
        *,
        gates: dict[str, Any] | None = None,
        poll_seconds: float = 30.0,
        metrics_timeout: float = 900.0,
        sleep=time.sleep,
        clock=time.time,
    ) -> None:
        self.client = client
        self.specs = specs
        self.progress = progress
        self.gates = dict(gates or {})  # ring key -> GateConfig: which metrics are worth an offender query
        self.poll_seconds = poll_seconds
        self.metrics_timeout = metrics_timeout
        self._sleep = sleep
        self._clock = clock

    # configurations of a ring
    def _spec(self, target: RingTarget) -> RingDeploymentSpec:
        return self.specs[target.selector]

    def ring_configurations(self, key: str) -> list[dict[str, Any]]:
        """The ring's configurations, oldest first (IoT Hub applies the newest among equal priorities)."""
        cfgs = [c for c in self.client.list_configurations() if (c.get("labels") or {}).get(RING_LABEL) == key]
        return sorted(cfgs, key=lambda c: (c.get("createdTimeUtc") or "", c.get("id", "")))

    def _current(self, spec: RingDeploymentSpec) -> dict[str, Any] | None:
        cfgs = self.ring_configurations(spec.key)
        return cfgs[-1] if cfgs else None

    # FleetHub
    def desired(self, target: RingTarget) -> DesiredModel | None:
        spec = self._spec(target)
        cfg = self._current(spec)
        return desired_from_configuration(cfg, spec.model) if cfg else None

    def set_desired(self, target: RingTarget, desired: DesiredModel | None) -> None:
        spec = self._spec(target)
        if desired is not None and desired.shadow is not None:
            raise ValueError(
                f"ring {target.ring!r}: a ring layer cannot carry a candidate to shadow (the stack check refuses "
                "shadow_soak_seconds on Azure rings)"
            )
        if desired is None:
            for cfg in self.ring_configurations(spec.key):
                self.client.delete_configuration(cfg["id"], "*")
            return
        apply_configuration(self.client, ring_configuration(spec, desired))

    def observe(self, target: RingTarget, desired: DesiredModel | None, since: float) -> RingObservation:
        spec = self._spec(target)
        cfg = self._wait_for_metrics(spec)
        devices = (
            int(((cfg or {}).get("systemMetrics") or {}).get("results", {}).get("targetedCount", 0))
            if cfg
            else self._count(f"SELECT COUNT() AS n FROM devices WHERE {spec.target_condition}")
        )
        if desired is None:
            serving = self._count(
                f"SELECT COUNT() AS n FROM devices.modules WHERE moduleId = '{AGENT_MODULE}' AND "
                f"properties.reported.models.{model_key(spec.model)}.ring = '{spec.key}'"
            )
            return RingObservation(devices=devices, adopted=max(0, devices - serving), failed=0, reporting=devices)
        runtime: list[tuple[str, str]] = []
        if cfg is not None and desired_from_configuration(cfg, spec.model) == desired:
            system = (cfg.get("systemMetrics") or {}).get("results") or {}
            custom = (cfg.get("metrics") or {}).get("results") or {}
            adopted, reporting = int(custom.get("adopted", 0)), int(custom.get("reporting", 0))
            agent_failed, runtime_failed = int(custom.get("failed", 0)), int(system.get("reportedFailedCount", 0))
            runtime = self._runtime_failures(cfg) if runtime_failed else []
            both = {d for d, _ in runtime}
            if both and agent_failed:
                both |= {
                    str(r.get("deviceId"))
                    for r in self.client.query(  # bounded: a lower bound of the union is enough
                        f"SELECT TOP {FAILURE_SAMPLE} deviceId FROM devices.modules WHERE {metric_where(spec, desired, 'failed')}"
                    )
                }
            failed = min(devices, max(agent_failed, runtime_failed, len(both)))
            adopted = min(adopted, max(0, devices - failed))
        else:
            adopted = self._count(f"SELECT COUNT() AS n FROM devices.modules WHERE {metric_where(spec, desired, 'adopted')}")
            failed = self._count(f"SELECT COUNT() AS n FROM devices.modules WHERE {metric_where(spec, desired, 'failed')}")
            reporting = self._count(f"SELECT COUNT() AS n FROM devices.modules WHERE {metric_where(spec, desired, 'reporting')}")
        stats = self._stats(spec, desired) if adopted else {}
        failures = self._failures(spec, desired, runtime) if failed else ()
        obs = RingObservation(
            devices=devices,
            adopted=adopted,
            failed=failed,
            reporting=reporting,
            inferences=int(stats.get("inferences") or 0),
            errors=int(stats.get("errors") or 0),
            invalid_outputs=int(stats.get("invalidOutputs") or 0),
            p99_latency_ms=float(stats["p99"]) if stats.get("p99") is not None else None,
            failures=failures,
        )
        offenders = self._offenders(spec, obs, metric_where(spec, desired, "adopted")) if adopted else ()
        if offenders:
            obs = dataclasses.replace(obs, offenders=offenders)
        gate = self.gates.get(spec.key)
        if adopted and (gate is None or gate.quality):
            where = metric_where(spec, desired, "adopted")
            summary = self.quality_summary(spec.model, where, desired.shadow.version if desired.shadow else None)
            if summary.devices:
                obs = dataclasses.replace(obs, summary=summary, device_summaries=self.device_summaries(spec.model, where))
        if (adopted or failed) and variant_kinds(desired):
            obs = dataclasses.replace(obs, variants=self._variants(spec, desired, obs))
        return obs

    def _variants(self, spec: RingDeploymentSpec, desired: DesiredModel, ring: RingObservation) -> tuple[tuple[str, RingObservation], ...]:
        """The ring's adopted and failed devices observed per build they report serving (`variant` in their entry): one
        GROUP BY count of both, then, for a ring of several builds, per build one aggregate query of its adopted
        devices' health (its failed devices are the rest of its count), its offender queries only for a metric it
        breaches, and its quality query where the ring reads quality. Builds the version does not ship are left out,
        so the queries are bounded by its builds (at most three), never by devices. A ring of one build is that build."""
        kinds = variant_kinds(desired)
        r = _reported(spec.model)
        adopted_where = metric_where(spec, desired, "adopted")
        rows = self.client.query(
            f"SELECT {r}.variant AS variant, COUNT() AS n FROM devices.modules "
            f"WHERE ({adopted_where}) OR ({metric_where(spec, desired, 'failed')}) GROUP BY {r}.variant"
        )
        counted = {str(row["variant"]): int(row.get("n") or 0) for row in rows if row.get("variant") in kinds and row.get("n")}
        if len(counted) == 1:
            return ((next(iter(counted)), ring),)
        gate = self.gates.get(spec.key)
        out = []
        for kind, n in sorted(counted.items()):
            where = f"{adopted_where} AND {r}.variant = '{kind}'"
            stats = self._stats_where(spec.model, where)
            adopted = min(n, int(stats.get("n") or 0))
            obs = RingObservation(
                devices=n,
                adopted=adopted,
                failed=n - adopted,
                reporting=n,
                inferences=int(stats.get("inferences") or 0),
                errors=int(stats.get("errors") or 0),
                invalid_outputs=int(stats.get("invalidOutputs") or 0),
                p99_latency_ms=float(stats["p99"]) if stats.get("p99") is not None else None,
            )
            offenders = self._offenders(spec, obs, where) if adopted else ()
            if offenders:
                obs = dataclasses.replace(obs, offenders=offenders)
            if adopted and (gate is None or gate.quality):
                summary = self.quality_summary(spec.model, where, desired.shadow.version if desired.shadow else None)
                if summary.devices:
                    lazy = Lazy(functools.partial(self.device_summaries, spec.model, where))
                    obs = dataclasses.replace(obs, summary=summary, device_summaries=lazy)
            out.append((kind, obs))
        return tuple(out)

    def summarize(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> Summary:
        """The control group's telemetry: agents of `targets`' rings that serve `desired`, from their latest reports."""
        where = self._control_where(targets, desired)
        return self.quality_summary(desired.model, where) if where else Summary()

    def summarize_variants(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> dict[str, Summary]:
        """The control group per build its agents report serving (FleetHub's optional summarize_variants): one GROUP BY
        count, then one quality query per build found; nothing for a version of one build."""
        kinds = variant_kinds(desired)
        where = self._control_where(targets, desired)
        if not kinds or not where:
            return {}
        r = _reported(desired.model)
        rows = self.client.query(f"SELECT {r}.variant AS variant, COUNT() AS n FROM devices.modules WHERE {where} GROUP BY {r}.variant")
        found = sorted({str(row["variant"]) for row in rows if row.get("variant") in kinds and row.get("n")})
        out = {kind: self.quality_summary(desired.model, f"{where} AND {r}.variant = '{kind}'") for kind in found}
        return {kind: s for kind, s in out.items() if s.devices}

    def _control_where(self, targets: tuple[RingTarget, ...], desired: DesiredModel) -> str | None:
        keys = [self._spec(t).key for t in targets]
        if not keys:
            return None
        r = _reported(desired.model)
        rings = " OR ".join(f"{r}.ring = '{k}'" for k in keys)
        return (
            f"moduleId = '{AGENT_MODULE}' AND ({rings}) AND {r}.version = '{desired.version}' AND {r}.sha256 = '{desired.sha256}' "
            f"AND {r}.status = 'ok'"
        )

    def quality_summary(self, model: str, where: str, candidate: str | None = None) -> Summary:
        """One aggregate query: the sums of the matching agents' quality entries (contract/iotedge.py); `candidate`: the
        version they shadow, whose counts it sums too."""
        q = f"{_reported(model)}.quality"
        classes = [str(i) for i in range(PROBED_CLASSES)] + [OTHER]
        parts = [
            "COUNT() AS devices",
            f"SUM({q}.n) AS n",
            *(f"SUM({q}.classes.{class_key(c)}) AS {class_key(c)}" for c in classes),
            *(f"SUM({q}.confidence.b{i}) AS b{i}" for i in range(CONFIDENCE_BINS)),
            f"SUM({q}.timed) AS timed",
            f"AVG({q}.p50Ms) AS p50",
            f"SUM({q}.labelled.n) AS yn",
            f"SUM({q}.labelled.correct) AS yc",
            *(f"SUM({q}.shadow.{f}) AS s_{f}" for f in ("compared", "agree", "errors", "invalid")),
            f"AVG({q}.shadow.p50Ms) AS sp",
            f"AVG({q}.shadow.servedP50Ms) AS tp",
        ]
        rows = self.client.query(f"SELECT {', '.join(parts)} FROM devices.modules WHERE {where} AND IS_DEFINED({q}.timed)")
        row = rows[0] if rows else {}
        return _summary(row, classes, candidate)

    def device_summaries(self, model: str, where: str) -> tuple[tuple[str, Summary], ...]:
        """A sample of adopted devices' own quality summaries (TOP QUALITY_SAMPLE; IoT Hub has no ORDER BY)."""
        q = f"{_reported(model)}.quality"
        rows = self.client.query(
            f"SELECT TOP {QUALITY_SAMPLE} deviceId, {q} AS quality FROM devices.modules WHERE {where} AND IS_DEFINED({q}.timed)",
            limit=QUALITY_SAMPLE,
        )
        out = []
        for row in rows:
            entry = row.get("quality")
            if isinstance(entry, dict):
                out.append((str(row.get("deviceId")), _device_summary(entry)))
        return tuple(out)

    def load_progress(self, rollout_id: str) -> dict[str, Any] | None:
        return self.progress.load(rollout_id)

    def save_progress(self, rollout_id: str, progress: dict[str, Any]) -> None:
        self.progress.save(rollout_id, progress)

    def rollouts(self, rollout: str) -> list[dict[str, Any]]:
        return sorted(self.progress.list(rollout), key=lambda p: p.get("started_at") or 0)

    # helpers
    def _wait_for_metrics(self, spec: RingDeploymentSpec) -> dict[str, Any] | None:
        """The ring's configuration once IoT Hub has evaluated its metrics (or None after metrics_timeout)."""
        deadline = self._clock() + self.metrics_timeout
        while True:
            cfg = self._current(spec)
            if cfg is None:
                return None
            live = self.client.get_configuration(cfg["id"]) or cfg
            if "targetedCount" in ((live.get("systemMetrics") or {}).get("results") or {}):
                return live
            if self._clock() >= deadline:
                return live
            self._sleep(self.poll_seconds)

    def _count(self, sql: str) -> int:
        rows = self.client.query(sql)
        return int(rows[0].get("n", 0)) if rows else 0

    def _stats(self, spec: RingDeploymentSpec, desired: DesiredModel) -> dict[str, Any]:
        r = f"properties.reported.models.{model_key(spec.model)}"
        rows = self.client.query(
            f"SELECT SUM({r}.inferences) AS inferences, SUM({r}.errors) AS errors, "
            f"SUM({r}.invalidOutputs) AS invalidOutputs, MAX({r}.p99LatencyMs) AS p99 "
            f"FROM devices.modules WHERE {metric_where(spec, desired, 'adopted')}"
        )
        return rows[0] if rows else {}

    def _stats_where(self, model: str, where: str) -> dict[str, Any]:
        """_stats of the devices `where` selects, with their count (`n`): one build's adopted devices."""
        r = _reported(model)
        rows = self.client.query(
            f"SELECT COUNT() AS n, SUM({r}.inferences) AS inferences, SUM({r}.errors) AS errors, "
            f"SUM({r}.invalidOutputs) AS invalidOutputs, MAX({r}.p99LatencyMs) AS p99 FROM devices.modules WHERE {where}"
        )
        return rows[0] if rows else {}

    def _failures(
        self, spec: RingDeploymentSpec, desired: DesiredModel, runtime: list[tuple[str, str]] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """A sample for the report: what agents reported, then what the IoT Edge runtime did, one entry a device."""
        r = f"properties.reported.models.{model_key(spec.model)}"
        rows = self.client.query(
            f"SELECT TOP {FAILURE_SAMPLE} deviceId, {r}.error AS error FROM devices.modules WHERE {metric_where(spec, desired, 'failed')}",
            limit=FAILURE_SAMPLE,
        )
        out: dict[str, str] = {}
        for device, why in [*((str(row.get("deviceId")), str(row.get("error") or "failed")) for row in rows), *(runtime or [])]:
            out[device] = f"{out[device]}; {why}" if device in out else why
        return tuple(list(out.items())[:FAILURE_SAMPLE])

    def _offenders(self, spec: RingDeploymentSpec, obs: RingObservation, where: str) -> tuple[tuple[str, str, float], ...]:
        """(device, metric, value) from each adopted device's own window (those `where` selects: the ring's adopted
        devices, or one build's), worst first, at most OFFENDERS_PER_METRIC a metric. IoT Hub's query language documents
        no ORDER BY: TOP returns any matching devices, so the rates (which need two properties) are ranked among those;
        p99 is filtered by the gate's threshold when it is known."""
        gate = self.gates.get(spec.key)
        ring = measure(obs)
        r = f"properties.reported.models.{model_key(spec.model)}"
        out: list[tuple[str, str, float]] = []
        for metric in OFFENDER_METRICS:
            bound = getattr(gate, THRESHOLDS[metric]) if gate is not None else 0.0
            if bound is None or ring[metric] is None or ring[metric] <= bound:
                continue
            prop, also = OFFENDER_QUERIES[metric]
            above = f"{math.floor(bound * 1000) / 1000:.3f}" if metric == "p99_latency_ms" else "0"
            rows = self.client.query(
                f"SELECT TOP {OFFENDERS_PER_METRIC} deviceId, {', '.join(f'{r}.{p} AS {p}' for p in (prop, *also))} FROM devices.modules "
                f"WHERE {where} AND {r}.{prop} > {above}",
                limit=OFFENDERS_PER_METRIC,
            )
            ranked = []
            for row in rows:
                value, inferences = _number(row.get(prop)), _number(row.get("inferences"))
                if value is None or value <= 0:
                    continue
                if not also:
                    ranked.append((str(row.get("deviceId")), round(value, 3)))
                elif inferences is not None and inferences > 0:
                    ranked.append((str(row.get("deviceId")), round(value / inferences, 6)))
            ranked.sort(key=lambda o: (-o[1], o[0]))
            out += [(device, metric, value) for device, value in ranked[:OFFENDERS_PER_METRIC]]
        return tuple(out)

    def _runtime_failures(self, cfg: dict[str, Any]) -> list[tuple[str, str]]:
        """A sample (TOP FAILURE_SAMPLE: this runs every poll, against IoT Hub's query quota) of the devices counted
        in reportedFailedCount, with the runtime's lastDesiredStatus: the configuration's own query when the hub
        returned it (keyed by metric id, or by display name in older API versions)."""
        queries = (cfg.get("systemMetrics") or {}).get("queries") or {}
        sql = queries.get("reportedFailedCount") or queries.get("Reporting Failure") or RUNTIME_FAILED_QUERY.format(id=cfg["id"])
        m = re.search(r"\bwhere\b(.*)$", sql, re.I | re.S)
        if not m:
            return []
        rows = self.client.query(
            f"SELECT TOP {FAILURE_SAMPLE} deviceId, properties.reported.lastDesiredStatus.code AS code, "
            f"properties.reported.lastDesiredStatus.description AS description FROM devices.modules WHERE {m.group(1).strip()}"
        )
        return [
            (
                str(row.get("deviceId")),
                f"IoT Edge runtime did not apply the deployment (lastDesiredStatus {row.get('code')}"
                + (f": {row['description']}" if row.get("description") else "")
                + ")",
            )
            for row in rows
        ]


def _reported(model: str) -> str:
    return f"properties.reported.models.{model_key(model)}"


def _count(value: Any) -> int:
    n = _number(value)
    return int(n) if n is not None else 0


def _summary(row: Mapping[str, Any], classes: list[str], candidate: str | None) -> Summary:
    """A Summary from one aggregate row of quality_summary."""
    bins = tuple(_count(row.get(f"b{i}")) for i in range(CONFIDENCE_BINS))
    shadow = None
    if candidate is not None:
        shadow = ShadowSummary(
            candidate,
            "",
            *(_count(row.get(f"s_{f}")) for f in ("compared", "agree", "errors", "invalid")),
            _number(row.get("sp")),
            _number(row.get("tp")),
        )
    counts = {c: _count(row.get(class_key(c))) for c in classes}
    return Summary(
        devices=_count(row.get("devices")),
        predictions=_count(row.get("n")),
        classes={c: n for c, n in counts.items() if n},
        confidence=bins if any(bins) else (),
        latency_n=_count(row.get("timed")),
        p50_ms=_number(row.get("p50")),
        shadow=shadow,
        labelled=_count(row.get("yn")),
        correct=_count(row.get("yc")),
    )


def _device_summary(entry: Mapping[str, Any]) -> Summary:
    """One device's own quality entry as a Summary."""
    classes = entry.get("classes") if isinstance(entry.get("classes"), dict) else {}
    conf = entry.get("confidence") if isinstance(entry.get("confidence"), dict) else {}
    sh = entry.get("shadow") if isinstance(entry.get("shadow"), dict) else None
    lab = entry.get("labelled") if isinstance(entry.get("labelled"), dict) else {}
    bins = tuple(_count(conf.get(f"b{i}")) for i in range(CONFIDENCE_BINS))
    return Summary(
        devices=1,
        predictions=_count(entry.get("n")),
        classes={(k[1:] if k != OTHER else k): _count(v) for k, v in classes.items() if _count(v)},
        confidence=bins if any(bins) else (),
        latency_n=_count(entry.get("timed")),
        p50_ms=_number(entry.get("p50Ms")),
        shadow=None
        if sh is None
        else ShadowSummary(
            str(sh.get("version", "")),
            str(sh.get("sha256", "")),
            *(_count(sh.get(f)) for f in ("compared", "agree", "errors", "invalid")),
            _number(sh.get("p50Ms")),
            _number(sh.get("servedP50Ms")),
        ),
        labelled=_count(lab.get("n")),
        correct=_count(lab.get("correct")),
    )


def _number(value: Any) -> float | None:
    """A reported number, or None for anything an agent should not have sent (JSON booleans are not counts)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- the gate: typed resource inputs -> the shared driver ---------------------------------------------------------
class AzureRingGateProps(RingGateProps):
    """A ring gate on Azure: the hub it reads and writes (service policy and key), where rollout records are kept, the
    Key Vault key that signs rollback orders, and each ring's layered deployment."""

    hub_host: str
    key_name: str
    hub_key: str
    ring_specs: list[dict[str, Any]]
    endpoint: str | None = None  # the hub's REST endpoint when not https://<hub_host> (the tests' local server)
    blob_endpoint: str | None = None  # rollout records; the gate needs these two and key_url unless it is handed a
    progress_container: str | None = None  # progress store and a signer (tests)
    key_url: str | None = None


def desired_from_props(props: Mapping[str, Any]) -> DesiredModel:
    d = AzureRingGateProps.of(props).declared()
    return replace(d, rollout=rollout_id(props["rollout"], d))


def hub_from_props(props: Mapping[str, Any] | AzureRingGateProps, progress: ProgressStore | None = None, **kwargs: Any) -> AzureHub:
    p = props if isinstance(props, AzureRingGateProps) else AzureRingGateProps.of(props)
    client = HubClient(p.hub_host, p.key_name, p.hub_key, p.endpoint)
    specs = {s.key: s for s in (RingDeploymentSpec.from_json(d) for d in p.ring_specs)}
    gates = {f"{p.rollout}.{r.name}": r.gate for r in p.ring_configs()}
    if progress is None and not (p.blob_endpoint and p.progress_container):
        raise ProviderInputError("AzureRingGateProps: blob_endpoint and progress_container are required to keep rollout records")
    store = progress or BlobProgressStore(p.blob_endpoint, p.progress_container)
    return AzureHub(client, specs, store, gates=gates, poll_seconds=p.poll_seconds, **kwargs)


def run_gate(
    props: Mapping[str, Any], hub: AzureHub | None = None, signer: Any = None, clock: Any = None, trust_container: Any = None
) -> Progress:
    """The RingGate resource on Azure: the shared driver over the rings' layered deployments and the module twins. The
    store's container is the stack's TUF repository (components/azure/trust_store.py): refreshed before the ring deploys,
    a rejected version revoked. `trust_container`: a ContainerClient stand-in (tests); given a hub but no container,
    the gate runs without it."""
    from components.azure.trust_store import repository_for_uri

    p = AzureRingGateProps.of(props)
    connect = hub is None or trust_container is not None
    hub = hub or hub_from_props(p)
    if signer is None:
        from components.azure.signer import KeyVaultSigner

        if not p.key_url:
            raise ProviderInputError("AzureRingGateProps: key_url is required to sign rollback orders")
        signer = KeyVaultSigner(p.key_url)
    rings = p.ring_configs()
    specs = [RingDeploymentSpec.from_json(d) for d in p.ring_specs]
    caps, windows = {s.key: s.download_cap for s in specs}, {s.key: s.windows for s in specs}
    keys = [f"{p.rollout}.{r.name}" for r in rings]
    # each ring's download cap and windows as its layer carries them (resolved from the stack when the platform built the
    # specs): what the engine sets a ring to, and compares its layer with, has exactly that cap, and the ring's deadline
    # pauses while its window is closed
    plans = tuple(
        replace(plan, download_cap=caps.get(plan.target.selector)) for plan in p.ring_plans(keys, [windows.get(k, "") for k in keys])
    )
    gate = GateInputs(
        rollout=p.rollout,
        ring=p.ring,
        index=p.index,
        total_rings=len(rings),
        # each ring's control group: the rings after it, whose devices still run the previous version
        rings=tuple(replace(plan, control=tuple(later.target for later in plans[i + 1 :])) for i, plan in enumerate(plans)),
        declared=p.declared(),
        poll_seconds=p.poll_seconds,
        apply=f"run `pulumi up --stack {p.stack}`",
    )
    trust = repository_for_uri(gate.declared.uri, signer, container=trust_container) if connect else None
    return drive_gate(gate, hub, signer, clock or WallClock(), trust=trust)
