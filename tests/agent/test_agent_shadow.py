"""Shadow mode: a candidate verified like an install runs on the same requests as the served version, never answering."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

import edgefleet_agent.core
import edgefleet_agent.serving
from edgefleet_agent.contract.telemetry import Predictions, Shadow
from edgefleet_agent.serving import LoadedModel
from edgefleet_agent.shadow import AGREE_RTOL, ShadowRunner
from edgefleet_agent.telemetry import Watch, read_output

IMAGE = {"image": np.zeros((1, 3, 224, 224), np.float32)}


def images(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(n)]


def with_shadow(served, candidate):
    return dataclasses.replace(served, shadow=candidate)


@pytest.fixture
def downloads(monkeypatch):
    """Every artifact the agent downloads (not the delta patch it looks for first beside one: docs/deltas.md)."""
    seen: list[str] = []
    real = edgefleet_agent.core.download

    def spy(uri, dest, **kwargs):
        if "/patches/" not in uri:
            seen.append(uri)
        return real(uri, dest, **kwargs)

    monkeypatch.setattr(edgefleet_agent.core, "download", spy)
    return seen


def test_the_candidate_runs_on_the_same_requests_and_never_answers(make_agent, transport, v100, v110):
    agent_ = make_agent()
    transport.desired_model = with_shadow(v110, v100)  # an older candidate: no downgrade rule for a shadow
    assert agent_.sync() is True
    assert (agent_.current_version, agent_.status) == ("1.1.0", "ok")
    served, candidate = [], []
    for feed in images(12):
        pred = agent_.predict(feed)
        assert pred.version == "1.1.0"
        served.append(int(pred.outputs["scores"].argmax()))
        agent_.shadow_runner.drain()  # one at a time: none dropped
    for feed in images(12):
        candidate.append(int(agent_.shadow_runner.loaded.session.run(["scores"], feed)[0].argmax()))
    report = agent_.build_report()
    assert (report.version, report.status, report.error) == ("1.1.0", "ok", None)
    shadow = Shadow.from_json(report.shadow)
    assert (shadow.version, shadow.sha256) == ("1.0.0", v100.sha256)
    assert (shadow.compared, shadow.errors, shadow.invalid, shadow.dropped) == (12, 0, 0, 0)
    assert shadow.agree == sum(a == b for a, b in zip(served, candidate, strict=True))
    assert shadow.latency.n == 12 and shadow.served_latency.n == 12 and shadow.latency_ratio() is not None
    predictions = Predictions.from_json(report.shadow["predictions"])
    assert predictions.n == 12 and predictions.classes == {str(c): candidate.count(c) for c in set(candidate)}
    assert report.inferences == 12, "the candidate's runs are not the served version's requests"


def test_a_shadow_is_never_the_on_disk_current_or_previous(make_agent, transport, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    transport.desired_model = with_shadow(v100, v110)
    agent_.sync()
    pointer = agent_.store.read_pointer()
    assert (pointer.current.version, pointer.previous) == ("1.0.0", None)
    slots = {p.name for p in agent_.store.slots_dir.iterdir()}
    assert len(slots) == 2 and agent_._candidate.ref.slot in slots, "the candidate's slot is kept beside the pointer's"
    agent_.close()
    restarted = make_agent()
    restarted.start()
    assert restarted.current_version == "1.0.0"


def test_promoting_the_candidate_reuses_its_files_and_session(make_agent, transport, v100, v110, downloads, loads):
    agent_ = make_agent()
    transport.desired_model = with_shadow(v100, v110)
    agent_.sync()
    assert len(downloads) == 2 and len(loads) == 2
    runner = agent_.shadow_runner
    transport.desired_model = v110  # the gate promoted the candidate: served now, no shadow
    assert agent_.sync() is True
    assert (agent_.current_version, agent_.status, agent_.shadow_runner) == ("1.1.0", "ok", None)
    assert len(downloads) == 2, "no second download"
    assert len(loads) == 2, "no second load: the candidate's session is the one now served"
    assert not runner._thread.is_alive()
    pointer = agent_.store.read_pointer()
    assert (pointer.current.version, pointer.previous.version) == ("1.1.0", "1.0.0")
    assert agent_.predict(IMAGE).version == "1.1.0"
    assert agent_.build_report().shadow is None


def test_removing_the_shadow_unloads_it(make_agent, transport, v100, v110):
    cache = edgefleet_agent.serving.SessionCache()
    agent_ = make_agent(session_cache=cache)
    transport.desired_model = with_shadow(v100, v110)
    agent_.sync()
    runner = agent_.shadow_runner
    assert len(cache) == 2
    transport.desired_model = v100
    assert agent_.sync() is True
    assert agent_.shadow_runner is None and len(cache) == 1 and not runner._thread.is_alive()
    assert [p.name for p in agent_.store.slots_dir.iterdir()] == [agent_.store.read_pointer().current.slot]
    agent_.predict(IMAGE)
    assert agent_.build_report().shadow is None


def test_a_refused_candidate_is_reported_and_the_served_version_stays(make_agent, transport, publisher, keys, v100, downloads):
    agent_ = make_agent()
    forged = publisher.publish("1.3.0", "detector-1.1.0.onnx", signer=keys.other)
    transport.desired_model = with_shadow(v100, forged)
    agent_.sync()
    report = agent_.build_report()
    assert (report.version, report.status, report.failed_version, report.shadow) == ("1.0.0", "ok", None, None)
    assert report.error.startswith("shadow candidate detector 1.3.0 refused: signature does not verify")
    attempts = len(downloads)
    assert agent_.sync() is False and len(downloads) == attempts, "not retried until the desired state changes"
    transport.desired_model = v100  # the shadow is withdrawn: the refusal goes with it
    assert agent_.sync() is True and agent_.build_report().error is None


def test_a_candidate_needing_a_newer_agent_is_refused(make_agent, transport, publisher, v100):
    agent_ = make_agent()
    newer = publisher.publish("1.4.0", "detector-1.1.0.onnx", min_agent_version="9.0.0")
    transport.desired_model = with_shadow(v100, newer)
    agent_.sync()
    report = agent_.build_report()
    assert report.status == "ok" and report.version == "1.0.0"
    assert "shadow candidate detector 1.4.0 refused: detector 1.4.0 needs agent 9.0.0 or newer" in report.error


class HeldSession:
    """A session whose runs wait for `release` once `hold` is set: a candidate slower than the traffic."""

    def __init__(self, session) -> None:
        self.session = session
        self.hold = False
        self.release = threading.Event()

    def run(self, names, feeds):
        if self.hold:
            assert self.release.wait(20)
        return self.session.run(names, feeds)

    def get_providers(self):
        return self.session.get_providers()


def test_a_slow_candidate_never_slows_the_application_and_its_backlog_is_dropped(make_agent, transport, v100, v110, monkeypatch):
    opened: list[HeldSession] = []
    real = edgefleet_agent.serving.open_session
    monkeypatch.setattr(
        edgefleet_agent.serving, "open_session", lambda path, providers: opened.append(HeldSession(real(path, providers))) or opened[-1]
    )
    agent_ = make_agent()
    transport.desired_model = with_shadow(v100, v110)
    agent_.sync()
    runner = agent_.shadow_runner
    candidate = opened[-1]
    assert runner.loaded.session is candidate
    candidate.hold = True
    start = time.perf_counter()
    for feed in images(30):
        agent_.predict(feed)
    elapsed = time.perf_counter() - start
    candidate.release.set()
    assert runner.drain(20)
    report = agent_.build_report()
    shadow = Shadow.from_json(report.shadow)
    assert elapsed < 15, "requests did not wait for the candidate"
    assert report.inferences == 30 and report.errors == 0
    assert shadow.compared + shadow.dropped == 30
    assert shadow.compared <= runner.capacity + 1 and shadow.dropped >= 30 - runner.capacity - 1


def test_a_nan_candidate_is_counted_invalid(make_agent, transport, v100, v120_nan):
    agent_ = make_agent()
    transport.desired_model = with_shadow(v100, v120_nan)
    agent_.sync()
    for feed in images(3):
        agent_.predict(feed)
        agent_.shadow_runner.drain()
    shadow = Shadow.from_json(agent_.build_report().shadow)
    assert (shadow.compared, shadow.invalid, shadow.agree) == (3, 3, 0)


# -- agreement of outputs that are not a classifier's ----------------------------------------------------------------------
class Fixed:
    def __init__(self, *values: np.ndarray, fail: bool = False) -> None:
        self.values, self.fail = list(values), fail

    def run(self, names, feeds):
        if self.fail:
            raise RuntimeError("no")
        return self.values

    def get_providers(self):
        return ["CPUExecutionProvider"]


def loaded(session, names=("boxes",), watch=None) -> LoadedModel:
    return LoadedModel(session, ("CPUExecutionProvider",), list(names), (0,), (), (), (), watch)


@pytest.mark.parametrize(
    "candidate, agree",
    [
        (np.ones((1, 4, 4), np.float32), True),
        (np.ones((1, 4, 4), np.float32) * (1 + AGREE_RTOL / 2), True),
        (np.ones((1, 4, 4), np.float32) * (1 + AGREE_RTOL * 3), False),
        (np.ones((1, 4, 2), np.float32), False),
        (np.full((1, 4, 4), np.nan, np.float32), False),
    ],
)
def test_other_outputs_agree_within_the_stated_tolerance(candidate, agree):
    runner = ShadowRunner("m", "2.0.0", "0" * 64, loaded(Fixed(candidate), watch=Watch("values", 0, "boxes")))
    token = object()
    runner.retarget(token)
    served = np.ones((1, 4, 4), np.float32)
    try:
        assert runner.offer(token, {"x": served}, ["boxes"], [served], read_output(Watch("values", 0, "boxes"), [served]), 1.0)
        assert runner.drain()
        shadow = runner.take()
        assert (shadow.compared, shadow.agree) == (1, int(agree))
        assert shadow.predictions.kind == "values" if np.isfinite(candidate).all() else shadow.predictions is None
    finally:
        runner.close()


def test_a_failing_candidate_counts_errors_and_a_stale_request_is_not_compared():
    runner = ShadowRunner("m", "2.0.0", "0" * 64, loaded(Fixed(fail=True)))
    first, second = object(), object()
    runner.retarget(first)
    x = np.ones((1, 4), np.float32)
    try:
        runner.offer(first, {"x": x}, ["boxes"], [x], None, 1.0)
        runner.drain()
        assert runner.offer(second, {"x": x}, ["boxes"], [x], None, 1.0) is False, "a request to a version no longer served"
        shadow = runner.take()
        assert (shadow.compared, shadow.errors, shadow.dropped) == (0, 1, 0)
    finally:
        runner.close()
    assert not runner._thread.is_alive()


def test_the_candidate_reads_a_shared_memory_input_as_it_was_when_served():
    seen, moved_on = [], threading.Event()

    class Recording(Fixed):
        def run(self, names, feeds):
            moved_on.wait(10)
            seen.append(feeds["x"].tolist())
            return super().run(names, feeds)

    region = bytearray(16)
    x = np.frombuffer(memoryview(region), np.float32).reshape(1, 4)
    x[:] = 1
    runner = ShadowRunner("m", "2.0.0", "0" * 64, loaded(Recording(np.ones((1, 4), np.float32))))
    token = object()
    runner.retarget(token)
    try:
        assert runner.offer(token, {"x": x}, ["boxes"], [x], None, 1.0)
        x[:] = 7  # the application rewrites its region for its next request before the candidate runs
        moved_on.set()
        assert runner.drain()
        assert seen == [[[1, 1, 1, 1]]]
    finally:
        runner.close()
