"""The FleetHub the rollout engine drives on AWS: Greengrass deployments, their IoT jobs, CloudWatch and S3.

- desired / set_desired: the latest Greengrass deployment of the ring's thing group (one active deployment
  per target: a new one supersedes it). set_desired creates a deployment, with an idempotency token, so a
  gate resumed after a crash never deploys twice; a rollback deployment carries the signed rollback order
  in the model component's configuration merge.
- observe: the deployment's IoT job execution counts (succeeded = adopted; failed, rejected and timed out =
  failed; queued = not reporting) and the agents' health metrics in CloudWatch for that ring and version.
  The ring's declared device count is the floor of the denominator, so devices that never registered
  count as pending, never as healthy. When the ring's error rate or invalid-output share is over its gate,
  it also names the devices behind it (`device_offenders`) from the per-device metrics agents file only for
  bad windows.
- quality: when the ring's gate has quality criteria (or the desired state shadows a candidate), the same observation
  reads what the agents filed of their requests for that ring and version (contract/greengrass.py): class counts
  (the classes ListMetrics knows plus PROBED_CLASSES indices, since a new metric takes minutes to be listed; whatever
  the classes miss of the predictions count is compared as "other"), confidence bins, the requests' p50 (CloudWatch's
  percentile over the values and counts every agent filed: the merged histogram's median), a shadowed candidate's
  counts and p50s, labelled counts. `summarize` reads the same for a control group: the later rings (their names
  come with the gate's inputs, `control_rings`) on the previous version. No quality metric is per device, so a
  failed quality gate on AWS names no offending devices; its report gives the ring's and the control's values.
- variants: for a version of several builds (`DesiredModel.variants`), agents file each window's health and quality
  twice, under the ring's dimensions and with `Variant` (the build served; contract/greengrass.py says why both rather
  than one set read with SEARCH or a build folded into `Version`: every ring-wide read, alarm and older hub stays as it
  was, and a known-dimension MetricStat sees a new metric at once). `variant_observations` reads every build's health
  in one GetMetricData call and, where the ring reads quality, each build's quality summary, so each build's devices
  are judged on their own; `summarize_variants` reads the control group per build. IoT jobs count devices, not builds:
  a build's observation carries the ring's counts (`own_counts=False`) with its own metrics. A version of one build
  reads nothing more.
- load_progress / save_progress: one JSON object per rollout under rollouts/ in the model bucket
  (versioned, KMS-encrypted), so a gate resumes where the last `pulumi up` stopped.

boto3 is imported lazily and clients are built on first use: the gate's dynamic provider pickles nothing
but its inputs, and tests pass moto-backed or Stubber-wrapped clients.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from components.aws.plan import (
    AwsRingGateProps,
    Naming,
    RingComponents,
    RingJobPolicy,
    client_token,
    components_spec,
    deployment_request,
    deployment_tags,
    progress_key,
)
from components.props import variant_kinds
from components.rollout.gate import THRESHOLDS, measure
from components.rollout.progress import last_good, rollout_id
from components.rollout.quality import ShadowSummary, Summary
from components.rollout.spec import GateConfig
from components.rollout.types import OFFENDERS_PER_METRIC, RingObservation, RingTarget
from edgefleet_agent.contract import greengrass as gg
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.telemetry import CONFIDENCE_BINS, OTHER

log = logging.getLogger("edgefleet.aws.hub")

_COUNTS = dict((field, name) for name, field in gg.COUNT_METRICS)
METRICS = {
    "inferences": (_COUNTS["inferences"], "Sum"),
    "errors": (_COUNTS["errors"], "Sum"),
    "invalid": (_COUNTS["invalid_outputs"], "Sum"),
    "latency": (gg.LATENCY_METRIC, "p99"),
}
DEVICE_METRICS = dict(zip(("error_rate", "invalid_output_share"), (name for name, _ in gg.DEVICE_METRICS), strict=True))
FAILED_STATES = ("FAILED", "REJECTED", "TIMED_OUT")
MAX_QUERIES = 500  # GetMetricData without a Metrics Insights query: at most 500 metrics per request
PROBED_THINGS = 250  # succeeded job executions read directly: one ListJobExecutionsForJob page
LOOKBACK_SECONDS = 3 * 3600  # as ListMetrics RecentlyActive=PT3H; 182 one-minute periods x 500 metrics < 100,800 data points
PROBED_CLASSES = 32  # class indices read whether or not ListMetrics lists them yet


class Clients:
    """boto3 clients for one region, created on first use with the default credential chain."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._made: dict[str, Any] = {}

    def _get(self, service: str) -> Any:
        if service not in self._made:
            import boto3

            self._made[service] = boto3.client(service, region_name=self.region)
        return self._made[service]

    greengrass = property(lambda self: self._get("greengrassv2"))
    iot = property(lambda self: self._get("iot"))
    cloudwatch = property(lambda self: self._get("cloudwatch"))
    s3 = property(lambda self: self._get("s3"))
    kms = property(lambda self: self._get("kms"))


@dataclass(frozen=True)
class RingSite:
    target_arn: str
    policy: RingJobPolicy


class AwsHub:
    def __init__(
        self,
        *,
        region: str,
        stack: str,
        bucket: str,
        metric_namespace: str,
        rollout: str,
        model: str,
        model_component: str,
        agent_component: str,
        agent_version: str,
        sites: dict[str, RingSite],
        clients: Any = None,
        clock=time.time,
        gates: dict[str, GateConfig] | None = None,
        windows: dict[str, str] | None = None,
    ) -> None:
        """`windows`: each ring's group's maintenance windows document, merged into its deployments' configuration."""
        self.region = region
        self.naming = Naming(stack)
        self.bucket = bucket
        self.metric_namespace = metric_namespace
        self.rollout = rollout
        self.model = model
        self.model_component = model_component
        self.agent_component = agent_component
        self.agent_version = agent_version
        self.sites = sites
        self.gates = gates
        self.windows = windows or {}
        self.clients = clients if clients is not None else Clients(region)
        self._clock = clock
        self._known: dict[str, DesiredModel] = {}

    @classmethod
    def from_props(
        cls, props: Mapping[str, Any] | AwsRingGateProps, clients: Any = None, clock: Callable[[], float] = time.time
    ) -> "AwsHub":
        p = props if isinstance(props, AwsRingGateProps) else AwsRingGateProps.of(props)
        sites = {
            r.name: RingSite(target, RingJobPolicy(**policy))
            for r, target, policy in zip(p.ring_configs(), p.targets, p.policies, strict=True)
        }
        hub = cls(
            region=p.region,
            stack=p.stack,
            bucket=p.bucket,
            metric_namespace=p.metric_namespace,
            rollout=p.rollout,
            model=p.model,
            model_component=p.model_component,
            agent_component=p.agent_component,
            agent_version=p.agent_version,
            sites=sites,
            clients=clients,
            clock=clock,
            gates={r.name: r.gate for r in p.ring_configs()},
            windows=dict(zip((r.name for r in p.ring_configs()), p.windows, strict=True)) if p.windows else {},
        )
        declared = p.declared()
        hub.remember(replace(declared, rollout=rollout_id(p.rollout, declared)))
        return hub

    def remember(self, *models: DesiredModel | None) -> None:
        """Versions this hub can map a deployment back to (the rollout's own, and those its records name)."""
        for m in models:
            if m is not None:
                self._known[m.version] = m

    def _known_version(self, version: str) -> DesiredModel | None:
        if version not in self._known:
            for record in self.rollouts(self.rollout):  # a rollback target, an earlier version
                self.remember(DesiredModel.from_json(record.get("desired")))
        return self._known.get(version)

    def now(self) -> float:
        return self._clock()

    # -- Greengrass ---------------------------------------------------------------------------------------
    def latest_deployment(self, target_arn: str) -> dict[str, Any] | None:
        resp = self.clients.greengrass.list_deployments(targetArn=target_arn, historyFilter="LATEST_ONLY")
        latest = [d for d in resp.get("deployments", []) if d.get("isLatestForTarget", True) and not d.get("parentTargetArn")]
        if not latest:
            return None
        return self.clients.greengrass.get_deployment(deploymentId=latest[0]["deploymentId"])

    def _model_spec(self, deployment: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        spec = (deployment.get("components") or {}).get(self.model_component)
        if spec is None:
            return None, {}
        merge = (spec.get("configurationUpdate") or {}).get("merge") or "{}"
        try:
            config = json.loads(merge)
        except json.JSONDecodeError:
            config = {}
        return spec.get("componentVersion"), config if isinstance(config, dict) else {}

    def _ring(self, target: RingTarget) -> tuple[RingSite, RingComponents]:
        site = self.sites.get(target.ring)
        if site is None or site.target_arn != target.selector:
            raise KeyError(f"ring {target.ring!r} of rollout {self.rollout!r} is not one this gate was given ({', '.join(self.sites)})")
        return site, RingComponents(
            self.model_component, self.agent_component, self.agent_version, self.rollout, target.ring, self.windows.get(target.ring, "")
        )

    # -- FleetHub -------------------------------------------------------------------------------------------
    def desired(self, target: RingTarget) -> DesiredModel | None:
        self._ring(target)
        deployment = self.latest_deployment(target.selector)
        if deployment is None:
            return None
        version, config = self._model_spec(deployment)
        if version is None:
            return None
        # a version this gate knows maps back to the very DesiredModel the engine compares with; any other one
        # (a deployment made by hand, say) maps to a stand-in that never equals what the engine wants
        base = self._known_version(version) or DesiredModel(
            model=self.model, version=version, sha256="", size=0, uri="", manifest="", signature=""
        )
        rid = config.get("RolloutId", base.rollout)
        order = config.get("RollbackOrder") or None
        if order:
            return replace(base, rollout=rid, rollback_order=order, rollback_signature=config.get("RollbackSignature") or None)
        return base if base.rollout == rid else replace(base, rollout=rid)

    def set_desired(self, target: RingTarget, desired: DesiredModel | None) -> None:
        if desired is not None and desired.shadow is not None:
            raise ValueError(
                f"ring {target.ring!r}: a Greengrass deployment cannot carry a candidate to shadow (the stack check refuses "
                "shadow_soak_seconds on AWS rings)"
            )
        self.clients.greengrass.create_deployment(**self.deployment_request(target, desired))

    def deployment_request(self, target: RingTarget, desired: DesiredModel | None) -> dict[str, Any]:
        site, ring = self._ring(target)
        if desired is None:
            components, version, rollback, rid = {}, None, False, "none"
        else:
            order = (desired.rollback_order, desired.rollback_signature or "") if desired.is_rollback else None
            components = components_spec(ring, desired.version, desired.rollout, order)
            version, rollback, rid = desired.version, desired.is_rollback, desired.rollout
        name = self.naming.deployment_name(self.rollout, target.ring, version, rollback=rollback)
        token = client_token(site.target_arn, rid, version or "none", "rollback" if rollback else "forward")
        return deployment_request(
            site.target_arn,
            name,
            components,
            site.policy,
            deployment_tags(self.rollout, target.ring, version),
            client_token=token,
            notify=version is not None and not rollback,  # a rollback or a removal: nothing on the device may defer it
        )

    def _carries(self, deployment: dict[str, Any], desired: DesiredModel | None) -> bool:
        version, config = self._model_spec(deployment)
        if desired is None:
            return version is None
        return version == desired.version and bool(config.get("RollbackOrder")) == desired.is_rollback

    def observe(self, target: RingTarget, desired: DesiredModel | None, since: float) -> RingObservation:
        site, _ = self._ring(target)
        expected = site.policy.devices
        deployment = self.latest_deployment(target.selector)
        if deployment is None or not deployment.get("iotJobId") or not self._carries(deployment, desired):
            return RingObservation(devices=expected, adopted=0, failed=0, reporting=0)
        job_id = deployment["iotJobId"]
        counts = self.clients.iot.describe_job(jobId=job_id)["job"].get("jobProcessDetails") or {}
        n = {
            k: int(counts.get(f"numberOf{k}Things", 0) or 0)
            for k in ("Succeeded", "Failed", "Rejected", "TimedOut", "InProgress", "Queued")
        }
        failed = n["Failed"] + n["Rejected"] + n["TimedOut"]
        targeted = n["Succeeded"] + failed + n["InProgress"] + n["Queued"]
        devices = max(targeted, expected)
        m = self.ring_metrics(target.ring, desired.version, since) if desired is not None else {}
        failures = self._executions(job_id, FAILED_STATES, 50) if failed else ()
        pending = self._executions(job_id, ("QUEUED",), 20) if n["Queued"] else ()
        obs = RingObservation(
            devices=devices,
            adopted=n["Succeeded"],
            failed=failed,
            reporting=n["Succeeded"] + failed + n["InProgress"],
            inferences=int(m.get("inferences") or 0),
            errors=int(m.get("errors") or 0),
            invalid_outputs=int(m.get("invalid") or 0),
            p99_latency_ms=m.get("latency"),
            failures=tuple((thing, status) for thing, status in failures),
            pending=tuple(thing for thing, _ in pending),
        )
        if desired is not None and obs.adopted and self._reads_quality(target.ring, desired):
            quality = self.ring_summary(target.ring, desired.version, since, desired.shadow)
            obs = replace(obs, summary=replace(quality, devices=obs.adopted))
        breached = self.offender_metrics(target.ring, obs)
        if desired is not None and breached:
            obs = replace(obs, offenders=self.device_offenders(target.ring, desired.version, since, breached, job_id))
        if desired is not None and obs.adopted and variant_kinds(desired):
            obs = replace(obs, variants=self.variant_observations(target.ring, desired, since, obs, job_id))
        return obs

    def variant_observations(
        self, ring: str, desired: DesiredModel, since: float, obs: RingObservation, job_id: str
    ) -> tuple[tuple[str, RingObservation], ...]:
        """Each build's devices observed on their own, from the per-build copies of the agents' metrics (`Variant`,
        contract/greengrass.py): one GetMetricData call for every build's health, one quality read per build where the
        ring reads quality. Builds nobody filed for are left out; a ring of one build is that build. IoT jobs count
        devices, not builds, so each build's observation carries the ring's counts (adoption is judged once, alike for
        every build) with its own health and quality. A build over a per-device threshold names the devices from the
        ring's per-device metrics (bad windows only, of whichever build)."""
        kinds = variant_kinds(desired)
        filed = {k: m for k, m in self.variant_metrics(ring, desired.version, since, kinds).items() if m.get("inferences") is not None}
        if len(filed) == 1:
            return ((next(iter(filed)), obs),)
        out = []
        named = obs.offenders  # each per-device metric is read once, for the ring or the first build over it
        read = set(self.offender_metrics(ring, obs))
        for kind, m in sorted(filed.items()):
            build = replace(
                obs,
                inferences=int(m.get("inferences") or 0),
                errors=int(m.get("errors") or 0),
                invalid_outputs=int(m.get("invalid") or 0),
                p99_latency_ms=m.get("latency"),
                failures=(),
                offenders=(),
                summary=None,
                device_summaries=(),
                variants=(),
                own_counts=False,
            )
            if self._reads_quality(ring, desired):
                quality = self.ring_summary(ring, desired.version, since, desired.shadow, variant=kind)
                build = replace(build, summary=replace(quality, devices=obs.adopted))
            breached = self.offender_metrics(ring, build)
            unread = [k for k in breached if k not in read]
            if unread:
                named += self.device_offenders(ring, desired.version, since, unread, job_id)
                read.update(unread)
            if breached:
                build = replace(build, offenders=tuple(o for o in named if o[1] in breached))
            out.append((kind, build))
        return tuple(out)

    def variant_metrics(self, ring: str, version: str, since: float, kinds: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
        """ring_metrics per build, from the per-build copies (`Variant`), for all `kinds` in one GetMetricData call."""
        start = math.floor(since / 60) * 60
        end = max(start + 60, math.ceil(self.now() / 60) * 60)
        period = min(end - start, 3600)
        queries = [
            {**q, "Id": f"{q['Id']}_{i}"} for i, kind in enumerate(kinds) for q in self.metric_queries(ring, version, period, variant=kind)
        ]
        series = self._series(queries, start, end)
        out: dict[str, dict[str, float | None]] = {}
        for i, kind in enumerate(kinds):
            values = {key: [v for _, v in series.get(f"{key}_{i}", [])] for key in METRICS}
            m: dict[str, float | None] = {k: sum(values[k]) if values[k] else None for k in ("inferences", "errors", "invalid")}
            m["latency"] = max(values["latency"]) if values["latency"] else None
            out[kind] = m
        return out

    def _reads_quality(self, ring: str, desired: DesiredModel) -> bool:
        gate = (self.gates or {}).get(ring)
        return desired.shadow is not None or gate is None or gate.quality

    def summarize(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> Summary:
        """The control group's telemetry: what agents on `desired` filed under each of `targets`' rings since `since`."""
        out = [self.ring_summary(t.ring, desired.version, since, None) for t in targets]
        return merge_summaries(out)

    def summarize_variants(self, targets: tuple[RingTarget, ...], desired: DesiredModel, since: float) -> dict[str, Summary]:
        """The control group per build (FleetHub's optional summarize_variants), from the per-build copies of its
        agents' quality metrics; builds nobody filed for are left out, and a version of one build reads nothing."""
        out = {}
        for kind in variant_kinds(desired) if targets else ():
            s = merge_summaries([self.ring_summary(t.ring, desired.version, since, None, variant=kind) for t in targets])
            if s.predictions or s.latency_n or s.labelled:
                out[kind] = s
        return out

    # -- quality metrics ---------------------------------------------------------------------------------------
    def _stat(self, qid: str, name: str, stat: str, dims: list[dict[str, str]], period: int) -> dict[str, Any]:
        return {
            "Id": qid,
            "ReturnData": True,
            "MetricStat": {
                "Metric": {"Namespace": self.metric_namespace, "MetricName": name, "Dimensions": dims},
                "Period": period,
                "Stat": stat,
            },
        }

    def quality_queries(
        self, ring: str, version: str, period: int, classes: list[str], candidate: str | None, variant: str | None = None
    ) -> list[dict[str, Any]]:
        """GetMetricData queries for a ring's (or control ring's) quality summary: one per class probed, per confidence
        bin, the requests' p50 and count, a shadowed candidate's counts and p50s, the labelled counts. `variant`: of that
        build's devices only (the per-build copies)."""
        dims = self._dimensions(ring, version, variant)
        q = [self._stat("pn", gg.PREDICTIONS_METRIC, "Sum", dims, period)]
        q += [
            self._stat(f"c{i}", gg.CLASS_METRIC, "Sum", [*dims, {"Name": gg.CLASS_DIMENSION, "Value": c}], period)
            for i, c in enumerate(classes)
        ]
        q += [
            self._stat(f"b{i}", gg.CONFIDENCE_METRIC, "Sum", [*dims, {"Name": gg.BIN_DIMENSION, "Value": str(i)}], period)
            for i in range(CONFIDENCE_BINS)
        ]
        q += [
            self._stat("lp", gg.REQUEST_LATENCY_METRIC, "p50", dims, period),
            self._stat("ln", gg.REQUEST_LATENCY_METRIC, "SampleCount", dims, period),
        ]
        q += [self._stat(f"y{i}", name, "Sum", dims, period) for i, (name, _) in enumerate(gg.LABELLED_METRICS)]
        if candidate is not None:
            cdims = [*dims, {"Name": gg.CANDIDATE_DIMENSION, "Value": candidate}]
            q += [self._stat(f"s{i}", name, "Sum", cdims, period) for i, (name, _) in enumerate(gg.SHADOW_COUNT_METRICS)]
            q += [
                self._stat("sp", gg.SHADOW_LATENCY_METRIC, "p50", cdims, period),
                self._stat("sn", gg.SHADOW_LATENCY_METRIC, "SampleCount", cdims, period),
                self._stat("tp", gg.SHADOW_SERVED_LATENCY_METRIC, "p50", cdims, period),
                self._stat("tn", gg.SHADOW_SERVED_LATENCY_METRIC, "SampleCount", cdims, period),
            ]
        return q

    def ring_summary(self, ring: str, version: str, since: float, candidate: DesiredModel | None, variant: str | None = None) -> Summary:
        """What agents on `version` in `ring` (serving build `variant`, if given) filed of their requests since `since`:
        sums over the window's periods; a p50 over several periods is their sample-weighted mean."""
        listed = self._listed_dimension(ring, version, gg.CLASS_METRIC, gg.CLASS_DIMENSION, variant)
        classes = list(dict.fromkeys([*(str(i) for i in range(PROBED_CLASSES)), OTHER, *listed]))[: MAX_QUERIES - 40]
        start = math.floor(since / 60) * 60
        end = max(start + 60, math.ceil(self.now() / 60) * 60)
        period = min(end - start, 3600)
        queries = self.quality_queries(ring, version, period, classes, candidate.version if candidate else None, variant)
        series = self._series(queries, start, end)

        def total(qid: str) -> int:
            return int(round(sum(v for _, v in series.get(qid, []))))

        def p50(value: str, count: str) -> float | None:
            weights = dict(series.get(count, []))
            pairs = [(v, weights.get(t, 0.0)) for t, v in series.get(value, [])]
            n = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / n if n else None

        counts = {c: total(f"c{i}") for i, c in enumerate(classes)}
        shadow = None
        if candidate is not None:
            compared, agree, errors, invalid = (total(f"s{i}") for i in range(len(gg.SHADOW_COUNT_METRICS)))
            shadow = ShadowSummary(candidate.version, candidate.sha256, compared, agree, errors, invalid, p50("sp", "sn"), p50("tp", "tn"))
        return Summary(
            devices=0,
            predictions=total("pn"),
            classes={c: n for c, n in counts.items() if n},
            confidence=tuple(total(f"b{i}") for i in range(CONFIDENCE_BINS)),
            latency_n=total("ln"),
            p50_ms=p50("lp", "ln"),
            shadow=shadow,
            labelled=total("y0"),
            correct=total("y1"),
        )

    def _series(self, queries: list[dict[str, Any]], start: int, end: int) -> dict[str, list[tuple[datetime, float]]]:
        kwargs: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.fromtimestamp(start, timezone.utc),
            "EndTime": datetime.fromtimestamp(end, timezone.utc),
            "ScanBy": "TimestampAscending",
        }
        out: dict[str, list[tuple[datetime, float]]] = {}
        while True:
            resp = self.clients.cloudwatch.get_metric_data(**kwargs)
            for r in resp.get("MetricDataResults", []):
                out.setdefault(r["Id"], []).extend(
                    (t, float(v)) for t, v in zip(r.get("Timestamps", []), r.get("Values", []), strict=False) if v is not None
                )
            if not resp.get("NextToken"):
                return out
            kwargs["NextToken"] = resp["NextToken"]

    def _listed_dimension(self, ring: str, version: str, metric_name: str, dimension: str, variant: str | None = None) -> list[str]:
        """Values of `dimension` that ListMetrics knows for the metric under this ring and version (errors: none)."""
        kwargs: dict[str, Any] = {
            "Namespace": self.metric_namespace,
            "MetricName": metric_name,
            "Dimensions": self._dimensions(ring, version, variant),
            "RecentlyActive": "PT3H",
        }
        found: list[str] = []
        try:
            while True:
                resp = self.clients.cloudwatch.list_metrics(**kwargs)
                for metric in resp.get("Metrics", []):
                    found += [d["Value"] for d in metric.get("Dimensions", []) if d.get("Name") == dimension]
                if not resp.get("NextToken"):
                    break
                kwargs["NextToken"] = resp["NextToken"]
        except Exception as exc:  # noqa: BLE001 - the probed classes still count
            log.warning("quality: ListMetrics failed (%s: %s); reading the probed classes only", type(exc).__name__, exc)
        return found

    def offender_metrics(self, ring: str, obs: RingObservation) -> list[str]:
        """The per-device metrics worth reading: those whose ring value is over the ring's gate (the only case
        in which the engine reports offenders), so a healthy ring costs no CloudWatch call beyond the aggregates.
        A hub built without gates reads any metric above zero."""
        m = measure(obs)
        gate = (self.gates or {}).get(ring)
        out = []
        for key in DEVICE_METRICS:
            bound = getattr(gate, THRESHOLDS[key]) if gate is not None else 0.0
            if obs.adopted and bound is not None and m[key] is not None and m[key] > bound:
                out.append(key)
        return out

    def _executions(self, job_id: str, states: tuple[str, ...], limit: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for state in states:
            resp = self.clients.iot.list_job_executions_for_job(jobId=job_id, status=state, maxResults=min(limit, 250))
            for e in resp.get("executionSummaries", []):
                out.append((e.get("thingArn", "").rsplit("/", 1)[-1], f"job execution {state.lower().replace('_', ' ')}"))
            if len(out) >= limit:
                break
        return out[:limit]

    # -- CloudWatch ------------------------------------------------------------------------------------------
    def metric_queries(self, ring: str, version: str, period: int, variant: str | None = None) -> list[dict[str, Any]]:
        dims = self._dimensions(ring, version, variant)
        return [
            {
                "Id": key,
                "ReturnData": True,
                "MetricStat": {
                    "Metric": {"Namespace": self.metric_namespace, "MetricName": name, "Dimensions": dims},
                    "Period": period,
                    "Stat": stat,
                },
            }
            for key, (name, stat) in METRICS.items()
        ]

    def ring_metrics(self, ring: str, version: str, since: float) -> dict[str, float | None]:
        """Sums of the counters and the p99 latency (the worst period's) since `since`, for agents on `version`."""
        start = math.floor(since / 60) * 60
        end = max(start + 60, math.ceil(self.now() / 60) * 60)
        period = min(end - start, 3600)
        kwargs: dict[str, Any] = {
            "MetricDataQueries": self.metric_queries(ring, version, period),
            "StartTime": datetime.fromtimestamp(start, timezone.utc),
            "EndTime": datetime.fromtimestamp(end, timezone.utc),
            "ScanBy": "TimestampAscending",
        }
        values: dict[str, list[float]] = {k: [] for k in METRICS}
        while True:
            resp = self.clients.cloudwatch.get_metric_data(**kwargs)
            for r in resp.get("MetricDataResults", []):
                values.setdefault(r["Id"], []).extend(v for v in r.get("Values", []) if v is not None)
            if not resp.get("NextToken"):
                break
            kwargs["NextToken"] = resp["NextToken"]
        out: dict[str, float | None] = {k: sum(values[k]) if values[k] else None for k in ("inferences", "errors", "invalid")}
        out["latency"] = max(values["latency"]) if values["latency"] else None
        return out

    def device_offenders(
        self, ring: str, version: str, since: float, metrics: list[str], job_id: str | None = None
    ) -> tuple[tuple[str, str, float], ...]:
        """(device, metric, value) for the worst devices on `version`, at most OFFENDERS_PER_METRIC per metric, each
        value from the device's latest window since `since` (within the last three hours) that filed one.

        Candidates are the devices ListMetrics knows for the metric, then the ring's succeeded job executions
        (one page), because CloudWatch can take up to 15 minutes to list a new metric and a bad canary fails
        sooner; together at most MAX_QUERIES, shared between `metrics`, read in one GetMetricData call. Names
        only explain a verdict the aggregates already reached, so a failed call (a deploying role without
        cloudwatch:ListMetrics, throttling) is logged and leaves them out instead of stopping the rollback.
        """
        metrics = [k for k in metrics if k in DEVICE_METRICS]
        if not metrics:
            return ()
        budget = MAX_QUERIES // len(metrics)
        probed: list[str] = []
        if job_id:
            try:
                probed = [thing for thing, _ in self._executions(job_id, ("SUCCEEDED",), PROBED_THINGS)]
            except Exception as exc:  # noqa: BLE001 - naming devices must never stop a gate
                log.warning("offending devices: could not list the job's devices: %s: %s", type(exc).__name__, exc)
        pairs: list[tuple[str, str]] = []
        for key in metrics:
            devices = dict.fromkeys([*self._listed_devices(ring, version, DEVICE_METRICS[key], budget), *probed])
            pairs += [(device, key) for device in list(devices)[:budget]]
        if not pairs:
            return ()
        try:
            latest = self._latest_values(ring, version, since, pairs)
        except Exception as exc:  # noqa: BLE001
            log.warning("offending devices not read from CloudWatch: %s: %s", type(exc).__name__, exc)
            return ()
        out: list[tuple[str, str, float]] = []
        for key in metrics:
            ranked = sorted(((d, v) for (d, k), v in latest.items() if k == key and v > 0), key=lambda dv: (-dv[1], dv[0]))
            out += [(d, key, round(v, 6)) for d, v in ranked[:OFFENDERS_PER_METRIC]]
        return tuple(out)

    def _dimensions(self, ring: str, version: str, variant: str | None = None) -> list[dict[str, str]]:
        dims = [{"Name": name, "Value": value} for name, value in zip(gg.DIMENSIONS, (self.rollout, ring, version), strict=True)]
        return [*dims, {"Name": gg.VARIANT_DIMENSION, "Value": variant}] if variant else dims

    def _listed_devices(self, ring: str, version: str, metric_name: str, limit: int) -> list[str]:
        """Devices that filed `metric_name` for this ring and version in about the last three hours, at most `limit`."""
        kwargs: dict[str, Any] = {
            "Namespace": self.metric_namespace,
            "MetricName": metric_name,
            "Dimensions": self._dimensions(ring, version),
            "RecentlyActive": "PT3H",
        }
        devices: list[str] = []
        try:
            while len(devices) < limit:
                resp = self.clients.cloudwatch.list_metrics(**kwargs)
                for metric in resp.get("Metrics", []):
                    devices += [d["Value"] for d in metric.get("Dimensions", []) if d.get("Name") == gg.DEVICE_DIMENSION]
                if not resp.get("NextToken"):
                    break
                kwargs["NextToken"] = resp["NextToken"]
        except Exception as exc:  # noqa: BLE001
            log.warning("offending devices: ListMetrics failed (%s: %s); reading the job's devices only", type(exc).__name__, exc)
        return list(dict.fromkeys(devices))[:limit]

    def offender_queries(self, ring: str, version: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        dims = self._dimensions(ring, version)
        return [
            {
                "Id": f"d{i}",
                "ReturnData": True,
                "MetricStat": {
                    "Metric": {
                        "Namespace": self.metric_namespace,
                        "MetricName": DEVICE_METRICS[key],
                        "Dimensions": [*dims, {"Name": gg.DEVICE_DIMENSION, "Value": device}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
            for i, (device, key) in enumerate(pairs[:MAX_QUERIES])
        ]

    def _latest_values(self, ring: str, version: str, since: float, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """Each (device, metric) pair's value in the latest minute that has one. The end runs a minute past now
        so that a device clock slightly ahead of the gate's does not hide its last window."""
        now = self.now()
        start = math.floor(max(since, now - LOOKBACK_SECONDS) / 60) * 60
        end = math.ceil(now / 60) * 60 + 60
        queries = self.offender_queries(ring, version, pairs)
        kwargs: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.fromtimestamp(start, timezone.utc),
            "EndTime": datetime.fromtimestamp(end, timezone.utc),
            "ScanBy": "TimestampDescending",
        }
        seen: dict[str, tuple[datetime, float]] = {}
        while True:
            resp = self.clients.cloudwatch.get_metric_data(**kwargs)
            for r in resp.get("MetricDataResults", []):
                for at, value in zip(r.get("Timestamps", []), r.get("Values", []), strict=True):
                    if value is not None and (r["Id"] not in seen or at > seen[r["Id"]][0]):
                        seen[r["Id"]] = (at, float(value))
            if not resp.get("NextToken"):
                break
            kwargs["NextToken"] = resp["NextToken"]
        return {pairs[int(qid[1:])]: value for qid, (_, value) in seen.items()}

    # -- progress in S3 ---------------------------------------------------------------------------------------
    def load_progress(self, rollout_id: str) -> dict[str, Any] | None:
        s3 = self.clients.s3
        try:
            body = s3.get_object(Bucket=self.bucket, Key=progress_key(self.rollout, rollout_id))["Body"].read()
        except s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def save_progress(self, rollout_id: str, progress: dict[str, Any]) -> None:
        self.clients.s3.put_object(
            Bucket=self.bucket,
            Key=progress_key(self.rollout, rollout_id),
            ContentType="application/json",
            Body=json.dumps(progress, sort_keys=True).encode(),
            ServerSideEncryption="aws:kms",
            BucketKeyEnabled=True,
        )

    def rollouts(self, rollout: str) -> list[dict[str, Any]]:
        """Progress records of `rollout`, oldest first."""
        s3 = self.clients.s3
        keys: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": f"rollouts/{rollout}/"}
        while True:
            resp = s3.list_objects_v2(**kwargs)
            keys += [o["Key"] for o in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]
        records = [json.loads(s3.get_object(Bucket=self.bucket, Key=k)["Body"].read()) for k in keys]
        return sorted(records, key=lambda p: p.get("started_at") or 0)

    def last_good(self, rollout: str, before: str | None = None) -> DesiredModel | None:
        """The rollback target: the desired model of the latest rollout of `rollout` that succeeded."""
        return last_good(self.rollouts(rollout), before)


def merge_summaries(parts: list[Summary]) -> Summary:
    """Sums of several rings' summaries; their p50s averaged, weighted by their timed requests."""
    classes: dict[str, int] = {}
    for p in parts:
        for k, v in p.classes.items():
            classes[k] = classes.get(k, 0) + v
    timed = sum(p.latency_n for p in parts)
    bins = [sum(p.confidence[i] if i < len(p.confidence) else 0 for p in parts) for i in range(CONFIDENCE_BINS)]
    return Summary(
        devices=sum(p.devices for p in parts),
        predictions=sum(p.predictions for p in parts),
        classes=classes,
        confidence=tuple(bins) if any(bins) else (),
        latency_n=timed,
        p50_ms=sum((p.p50_ms or 0.0) * p.latency_n for p in parts) / timed if timed else None,
        labelled=sum(p.labelled for p in parts),
        correct=sum(p.correct for p in parts),
    )
