"""The local hub's share of the engine contract: per-device offenders in observations, and the lease that
keeps two processes from driving one rollout."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.local.hub import LocalHub
from components.rollout.engine import RolloutEngine, RolloutPlan
from components.rollout.gate import MAX_OFFENDERS, evaluate
from components.rollout.observe import observe_reports
from components.rollout.spec import GateConfig
from components.rollout.types import OFFENDERS_PER_METRIC, RingTarget
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.state import DeviceReport
from tests.rollout.fakes import desired

V2 = desired("1.1.0")
REPO = Path(__file__).resolve().parents[2]


def report(dev: str, errors=0, invalid=0, p99=5.0, version=V2) -> DeviceReport:
    return DeviceReport(
        device_id=dev,
        model="detector",
        version=version.version,
        sha256=version.sha256,
        status="ok",
        inferences=100,
        errors=errors,
        invalid_outputs=invalid,
        p99_latency_ms=p99,
        reported_at=10.0,
    )


# -- offenders -----------------------------------------------------------------------------------------------
def test_observation_lists_the_worst_devices_per_metric_bounded_and_leaves_out_clean_ones():
    devices = [f"d{i:03d}" for i in range(200)]
    reports = {d: report(d, errors=i % 7, invalid=1 if i < 3 else 0, p99=5.0 + i) for i, d in enumerate(devices)}
    obs = observe_reports(devices, reports, V2, since=0.0)
    by_metric = {m: [(d, v) for d, mm, v in obs.offenders if mm == m] for m in ("error_rate", "invalid_output_share", "p99_latency_ms")}
    assert all(len(v) <= OFFENDERS_PER_METRIC for v in by_metric.values())
    assert by_metric["invalid_output_share"] == [("d000", 0.01), ("d001", 0.01), ("d002", 0.01)]
    assert by_metric["p99_latency_ms"][0] == ("d199", 204.0)
    assert [v for _, v in by_metric["error_rate"]] == sorted((v for _, v in by_metric["error_rate"]), reverse=True)
    assert all(v > 0 for vs in by_metric.values() for _, v in vs)


def test_gate_offenders_keep_only_breached_metrics_over_their_threshold_and_stay_bounded():
    devices = [f"d{i:03d}" for i in range(100)]
    reports = {d: report(d, errors=50, invalid=0, p99=5.0 if i else 900.0) for i, d in enumerate(devices)}
    obs = observe_reports(devices, reports, V2, since=0.0)
    gate = GateConfig(
        soak_seconds=0, deadline_seconds=10, success_share=1.0, min_reporting_share=1.0, max_error_rate=0.1, max_p99_latency_ms=100.0
    )
    v = evaluate(gate, obs, since_deploy=0, soak_started=None, now=1)
    assert v.outcome == "fail"
    assert len(v.offenders) <= MAX_OFFENDERS
    assert {"device": "d000", "metric": "p99_latency_ms", "value": 900.0, "max": 100.0} in v.offenders
    assert {o["metric"] for o in v.offenders} == {"error_rate", "p99_latency_ms"}
    assert all(o["value"] > o["max"] for o in v.offenders)


# -- the lease ---------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def progress_record(rollout: str = "detector") -> dict:
    return {"rollout_id": f"{rollout}@1", "rollout": rollout, "status": "running", "started_at": 0}


def test_a_held_lease_refuses_a_second_driver_with_the_hub_file_the_holder_and_the_fix(tmp_path):
    path = tmp_path / "hub.sqlite"
    a, b = LocalHub(path), LocalHub(path)
    with a.lease("detector", owner="edgefleet up (stack local)"):
        with pytest.raises(EdgefleetError) as err:
            with b.lease("detector", owner="pulumi gate canary"):
                pass
        text = str(err.value)
        assert str(path) in text and "edgefleet up (stack local)" in text and "fix:" in text and "wait for that run" in text
        target = RingTarget("detector", "canary", 0, ("d1",))
        with pytest.raises(EdgefleetError, match="being driven by edgefleet up"):
            b.save_progress("detector@1", progress_record())
        with pytest.raises(EdgefleetError, match="being driven by edgefleet up"):
            b.set_desired(target, V2)
        a.save_progress("detector@1", progress_record())
        a.set_desired(target, V2)
        b.save_progress("other@1", progress_record("other"))  # other rollouts are not held
        with a.lease("detector") as again:  # re-entrant for its holder
            assert again.owner == "edgefleet up (stack local)"
        assert a.lease_holder("detector")["owner"] == "edgefleet up (stack local)"
    assert a.lease_holder("detector") is None
    with b.lease("detector", owner="pulumi gate canary") as held:
        assert held.took_over is None
        b.save_progress("detector@1", progress_record())


def test_the_holder_renews_its_lease_while_it_runs(tmp_path):
    path = tmp_path / "hub.sqlite"
    a, b = LocalHub(path), LocalHub(path)
    with a.lease("detector", owner="A", ttl=0.3):
        time.sleep(1.0)  # three ttls: only renewal keeps it
        with pytest.raises(EdgefleetError, match="being driven by A"):
            with b.lease("detector", owner="B"):
                pass


def test_an_expired_lease_is_taken_over_and_the_old_holder_can_no_longer_write(tmp_path):
    path = tmp_path / "hub.sqlite"
    clock = Clock()
    a, b = LocalHub(path, clock=clock), LocalHub(path, clock=clock)
    with a.lease("detector", owner="A", ttl=30):
        clock.t += 31  # A stalled past its ttl (renewal thread never ran)
        with b.lease("detector", owner="B") as held:
            assert held.took_over and "A" in held.took_over
            with pytest.raises(EdgefleetError, match="lost its lease"):
                a.save_progress("detector@1", progress_record())
            b.save_progress("detector@1", progress_record())
        assert a.lease_holder("detector") is None
    assert a.lease_holder("detector") is None, "the old holder's exit must not release someone else's lease"


def test_a_lease_left_by_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path):
    path = tmp_path / "hub.sqlite"
    LocalHub(path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom components.local.hub import LocalHub\n"
            f"h = LocalHub({str(path)!r})\nwith h.lease('detector', owner='edgefleet up', ttl=3600):\n"
            "    print('held', flush=True)\n    time.sleep(120)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        mine = LocalHub(path)
        with pytest.raises(EdgefleetError, match=f"pid {holder.pid}"):
            with mine.lease("detector"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with mine.lease("detector", owner="edgefleet up (again)") as held:
        assert held.took_over and f"pid {holder.pid}" in held.took_over


def test_an_engine_without_the_lease_cannot_drive_a_held_rollout(tmp_path):
    from tests.rollout.fakes import FakeClock

    path = tmp_path / "hub.sqlite"
    a, b = LocalHub(path), LocalHub(path)
    plan = RolloutPlan("detector", V2, None, ())
    with a.lease("detector", owner="edgefleet up"):
        with pytest.raises(EdgefleetError, match="being driven by edgefleet up"):
            RolloutEngine(b, FakeClock()).run(plan)
    assert b.load_progress(plan.rollout_id) is None


# -- incremental observation -----------------------------------------------------------------------------------
V1 = desired("1.0.0")
DEVICES = [f"d{i:02d}" for i in range(12)]
_batch = st.lists(
    st.tuples(
        st.sampled_from(DEVICES),
        st.sampled_from([V1, V2, None]),
        st.sampled_from(["ok", "failed"]),
        st.integers(0, 5),
        st.one_of(st.none(), st.floats(1.0, 500.0)),
    ),
    max_size=8,
)


def ring_report(dev: str, v, status: str, errors: int, p99: float | None, at: float, **telemetry) -> DeviceReport:
    """A device's report in the incremental-observation properties: serving `v` (None: nothing), or failed on 1.1.0."""
    return DeviceReport(
        device_id=dev,
        model="detector",
        version=v.version if v else None,
        sha256=v.sha256 if v else None,
        status=status,
        error="broken" if status == "failed" else None,
        failed_version="1.1.0" if status == "failed" else None,
        inferences=10,
        errors=errors,
        invalid_outputs=0,
        p99_latency_ms=p99,
        reported_at=at,
        **telemetry,
    )


@settings(max_examples=25, deadline=None)
@given(batches=st.lists(st.tuples(_batch, st.booleans()), min_size=1, max_size=6))
def test_a_hub_that_reads_only_what_changed_observes_exactly_what_a_fresh_read_of_every_device_does(tmp_path_factory, batches):
    """The local hub hands each ring's memo only the devices whose report changed since its last poll (and keeps one memo
    per desired state, as a rollback observes two): after any sequence of reports, its observation of the ring against
    either version equals a from-scratch observation of every device's latest report."""
    path = tmp_path_factory.mktemp("hub") / "hub.sqlite"
    hub = LocalHub(path)
    target = RingTarget("detector", "canary", 0, DEVICES[:9])  # three devices report but are not in the ring
    for batch, against_old_too in batches:
        hub.put_reports([ring_report(dev, v, status, errors, p99, at=0.0) for dev, v, status, errors, p99 in batch])
        for version in (V2, V1) if against_old_too else (V2,):
            seen = hub.observe(target, version, since=0.0)
            fresh = LocalHub(path)
            assert seen == observe_reports(DEVICES[:9], fresh.reports("detector", DEVICES[:9]), version, since=0.0)


def test_report_rows_the_fast_decoder_refuses_or_cannot_map_are_read_as_the_agent_reads_them(tmp_path):
    """The hub decodes rows with orjson, which refuses the NaN the standard library writes for a broken latency, and maps
    rows straight onto DeviceReport only when every field is known: a NaN row and a row with a field this controller
    does not know (a newer agent of the same format) still read exactly as DeviceReport.from_json reads them, and a
    row of a newer format is refused as the agent refuses it."""
    import json
    import math
    import sqlite3

    from edgefleet_agent.contract.errors import FormatError

    path = tmp_path / "hub.sqlite"
    hub = LocalHub(path)
    hub.put_reports([report("nan", p99=float("nan")), report("newer"), report("later")])
    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT report FROM reports WHERE device_id='newer'").fetchone()
        db.execute("UPDATE reports SET report=? WHERE device_id='newer'", (json.dumps({**json.loads(text), "gpu_temp_c": 71}),))
        (text,) = db.execute("SELECT report FROM reports WHERE device_id='later'").fetchone()
        db.execute("UPDATE reports SET report=? WHERE device_id='later'", (json.dumps({**json.loads(text), "format": 99}),))
    fresh = LocalHub(path)
    got = fresh.reports("detector", ["nan", "newer"])
    with sqlite3.connect(path) as db:
        rows = dict(db.execute("SELECT device_id, report FROM reports WHERE device_id IN ('nan', 'newer')").fetchall())
    assert math.isnan(got["nan"].p99_latency_ms)
    assert got["newer"] == DeviceReport.from_json(rows["newer"]) and not hasattr(got["newer"], "gpu_temp_c")
    with pytest.raises(FormatError, match="format 99"):
        fresh.reports("detector", ["later"])


_report_fields = st.fixed_dictionaries(
    {
        "device_id": st.text(max_size=8),
        "model": st.just("detector"),
        "version": st.sampled_from([None, "1.0.0"]),
        "sha256": st.sampled_from([None, "a" * 64]),
        "status": st.sampled_from(["ok", "failed", "updating"]),
    },
    optional={
        "inferences": st.integers(0, 10**6),
        "p99_latency_ms": st.floats(0, 1e4),
        "variant": st.sampled_from(["fp32", "int8"]),
        "predictions": st.fixed_dictionaries({"kind": st.just("classes"), "n": st.integers(0, 9)}),
        "format": st.just(1),
    },
)


@settings(max_examples=60, deadline=None)
@given(body=_report_fields)
def test_a_report_filled_in_directly_is_the_report_its_constructor_makes(body):
    """The controller builds each decoded report without the frozen dataclass's __init__ (_build): what it gets must be
    indistinguishable from DeviceReport(**body): equal, hashed alike (a field value that cannot be hashed aside),
    frozen, and a body missing a required field still refused naming it."""
    import dataclasses

    built, made = DeviceReport.from_body(dict(body)), DeviceReport(**body)
    assert built == made and dataclasses.asdict(built) == dataclasses.asdict(made)
    assert repr(built) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.version = "9.9.9"  # type: ignore[misc]
    missing = {k: v for k, v in body.items() if k != "status"}
    with pytest.raises(TypeError, match="status"):
        DeviceReport.from_body(missing)


_build_batch = st.lists(
    st.tuples(
        st.sampled_from(DEVICES),
        st.sampled_from([V1, V2, None]),
        st.sampled_from(["ok", "failed"]),
        st.sampled_from([None, "fp32", "int8"]),
        st.integers(0, 40),
        st.sampled_from([5.0, 20.0]),
    ),
    max_size=8,
)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(_build_batch, min_size=1, max_size=6))
def test_per_build_figures_derived_while_one_build_is_reported_equal_those_kept_per_build(batches):
    """A ring memo keeps sums per build only once a second build (or a device reporting none beside one that does)
    appears, and until then derives the one build's figures from the ring's: after any sequence of reports, its
    observation and control summaries per build equal those of a memo that keeps every build's sums from the start."""
    from components.rollout.observe import ObserveMemo, control_summaries, control_summary
    from edgefleet_agent.contract.telemetry import Latency, Predictions

    lazy, kept = ObserveMemo(), ObserveMemo(split=True)
    lazy_control, kept_control = ObserveMemo(), ObserveMemo(split=True)
    latest: dict[str, DeviceReport] = {}
    for n, batch in enumerate(batches):
        for dev, v, status, variant, top, p99 in batch:
            preds = Predictions("classes", "scores")
            for i in range(top % 7):
                preds.add_class(i % 3, 0.05 * (i + top % 5))
            lat = Latency()
            lat.add(p99)
            latest[dev] = ring_report(
                dev,
                v,
                status,
                top % 3,
                p99,
                at=float(n),
                variant=variant,
                predictions=preds.to_json() if top % 2 else None,
                latency=lat.to_json() if top % 2 else None,
            )
        assert observe_reports(DEVICES, latest, V2, 0.0, lazy) == observe_reports(DEVICES, latest, V2, 0.0, kept)
        assert control_summaries(DEVICES, latest, V1, 0.0, lazy_control) == control_summaries(DEVICES, latest, V1, 0.0, kept_control)
        assert control_summary(DEVICES, latest, V1, 0.0, lazy_control) == control_summary(DEVICES, latest, V1, 0.0, kept_control)
