"""Serving: swaps never interrupt inference, sessions are shared, providers are chosen by preference."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from agent_testkit import FakeTransport

import edgefleet_agent.serving
from edgefleet_agent.serving import CPU, SessionCache, choose_providers


def test_inference_continues_during_swaps(make_agent, transport, publisher, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    stop = threading.Event()
    outcomes = {"served": 0, "nothing": 0}

    def loop() -> None:
        while not stop.is_set():
            outcomes["served" if agent_.infer() else "nothing"] += 1

    thread = threading.Thread(target=loop)
    thread.start()
    errors = 0
    versions = []
    try:
        for i in range(10):
            transport.desired_model = v110 if i % 2 == 0 else publisher.rollback(v100, v110)
            assert agent_.sync() is True
            versions.append(agent_.current_version)
            served = outcomes["served"]
            deadline = time.monotonic() + 10
            while outcomes["served"] < served + 10 and time.monotonic() < deadline:  # traffic on each version, however loaded
                time.sleep(0.005)
            errors += agent_.build_report().errors
    finally:
        stop.set()
        thread.join()
    assert versions == ["1.1.0", "1.0.0"] * 5
    assert outcomes["nothing"] == 0 and errors == 0
    assert outcomes["served"] >= 100, "each swap had ten requests served beside it"


class SlowSession:
    """Wraps a real session; a run can be held mid-flight to straddle a swap."""

    def __init__(self, session) -> None:
        self.session = session
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = False

    def run(self, names, feeds):
        if self.hold:
            self.entered.set()
            assert self.release.wait(10)
        return self.session.run(names, feeds)

    def get_providers(self):
        return self.session.get_providers()


def test_request_in_flight_finishes_on_the_old_session(make_agent, transport, v100, v110, monkeypatch):
    sessions = []
    real = edgefleet_agent.serving.open_session
    monkeypatch.setattr(
        edgefleet_agent.serving, "open_session", lambda path, providers: sessions.append(SlowSession(real(path, providers))) or sessions[-1]
    )
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    old = sessions[0]
    old.hold = True
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ok", agent_.infer()))
    thread.start()
    assert old.entered.wait(10)
    transport.desired_model = v110
    assert agent_.sync() is True, "the swap does not wait for the request in flight"
    assert agent_.current_version == "1.1.0"
    old.release.set()
    thread.join()
    assert result["ok"] is True
    assert agent_.build_report().inferences == 0, "a request that started on 1.0.0 is not counted for 1.1.0"
    assert agent_.infer() is True
    assert agent_.build_report().inferences == 1


def test_agents_share_sessions_through_the_cache(make_agent, tmp_path, v100, v110, loads):
    cache = SessionCache()
    transport = FakeTransport(v100)
    agents = [make_agent(tmp_path / f"dev-{i}", transport=transport, session_cache=cache, durable=False) for i in range(5)]
    for a in agents:
        a.sync()
    assert len(loads) == 1 and len(cache) == 1
    assert len({id(a._serving.loaded) for a in agents}) == 1
    transport.desired_model = v110
    for a in agents:
        a.sync()
    assert len(loads) == 2 and len(cache) == 1, "the 1.0.0 session is dropped once no agent serves it"
    assert all(a.infer() for a in agents)
    for a in agents:
        a.close()
    assert len(cache) == 0


def test_session_cache_loads_once_under_contention():
    cache = SessionCache()
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.05)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.acquire("k", load))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
    for _ in range(8):
        cache.release("k")
    assert len(cache) == 0


def test_session_cache_forgets_failed_loads():
    cache = SessionCache()
    with pytest.raises(RuntimeError):
        cache.acquire("k", lambda: (_ for _ in ()).throw(RuntimeError("no")))
    assert len(cache) == 0


@pytest.mark.parametrize(
    "preference, available, expected",
    [
        (["CUDAExecutionProvider", CPU], [CPU], [CPU]),
        (
            ["CUDAExecutionProvider", "OpenVINOExecutionProvider"],
            ["OpenVINOExecutionProvider", "CUDAExecutionProvider", CPU],
            ["CUDAExecutionProvider", CPU],
        ),
        (["TensorrtExecutionProvider"], ["CUDAExecutionProvider", CPU], [CPU]),
        ([CPU, "CUDAExecutionProvider"], ["CUDAExecutionProvider", CPU], [CPU]),
        ([], [CPU], [CPU]),
    ],
)
def test_choose_providers(preference, available, expected):
    assert choose_providers(preference, available) == expected


def test_first_available_preferred_provider_is_used(make_agent, transport, v100):
    import onnxruntime

    if "AzureExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has no second provider to prefer")
    agent_ = make_agent(execution_providers=["CUDAExecutionProvider", "AzureExecutionProvider", CPU])
    transport.desired_model = v100
    agent_.sync()
    assert agent_.providers == ("AzureExecutionProvider", CPU)
    assert agent_.infer() is True


def test_unavailable_providers_fall_back_to_cpu(make_agent, transport, v100):
    agent_ = make_agent(execution_providers=["CUDAExecutionProvider", "TensorrtExecutionProvider"])
    transport.desired_model = v100
    agent_.sync()
    assert agent_.providers == (CPU,)


def test_serve_forever_syncs_and_reports_the_applications_requests(make_agent, transport, v100, v110):
    """serve_forever syncs and reports; the requests it reports are the applications' (predict), across a swap."""
    agent_ = make_agent()
    transport.desired_model = v100
    stop = threading.Event()
    thread = threading.Thread(target=agent_.serve_forever, args=(stop,), kwargs={"sync_seconds": 0.05, "report_seconds": 0.05})
    thread.start()
    image = {"image": np.zeros((1, 3, 224, 224), np.float32)}
    try:
        deadline = time.monotonic() + 10
        while not any(r.version == "1.0.0" and r.inferences > 0 for r in transport.reports):
            assert time.monotonic() < deadline
            if agent_.current_version:
                assert agent_.predict(image).version == "1.0.0"
            time.sleep(0.02)
        transport.desired_model = v110
        while not any(r.version == "1.1.0" and r.inferences > 0 for r in transport.reports):
            assert time.monotonic() < deadline
            agent_.predict(image)
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    last = transport.reports[-1]
    assert (last.version, last.status, last.errors) == ("1.1.0", "ok", 0)
    assert sum(r.errors for r in transport.reports) == 0


@pytest.mark.parametrize("synthetic", [False, True])
def test_synthetic_traffic_only_when_asked(make_agent, transport, v100, synthetic):
    """Without applications' requests a device reports none: synthetic inputs are an opt-in for demos."""
    agent_ = make_agent()
    transport.desired_model = v100
    stop = threading.Event()
    kwargs = {"sync_seconds": 0.05, "report_seconds": 0.05, "synthetic_traffic": synthetic}
    thread = threading.Thread(target=agent_.serve_forever, args=(stop,), kwargs=kwargs)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while sum(1 for r in transport.reports if r.version == "1.0.0") < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
    counted = sum(r.inferences for r in transport.reports)
    assert counted > 0 if synthetic else counted == 0
