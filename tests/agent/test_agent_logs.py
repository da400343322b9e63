"""One log line per cause: a device whose hub is unreachable writes that once, then how often it recurred."""

from __future__ import annotations

import io
import logging
import threading

from edgefleet_agent.__main__ import parse_command
from edgefleet_agent.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def capture(every: float, clock: Clock) -> tuple[logging.Logger, io.StringIO, RepeatFilter]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    f = RepeatFilter(every, clock)
    handler.addFilter(f)
    logger = logging.getLogger(f"edgefleet.agent.test-{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out, f


def test_a_warning_repeated_every_period_is_logged_once_then_with_its_count():
    clock = Clock()
    log, out, _ = capture(60, clock)
    for _ in range(120):  # a report failing twice a second for a minute
        log.warning("%s: report failed: %s", "cam-1", "database is locked")
        clock.t += 0.5
    log.warning("%s: report failed: %s", "cam-1", "database is locked")
    lines = out.getvalue().splitlines()
    assert lines == [
        "cam-1: report failed: database is locked",
        "cam-1: report failed: database is locked [the same 119 more time(s) in the last 60s]",
    ]


def test_each_cause_gets_its_own_line_and_state_changes_are_never_held_back():
    clock = Clock()
    log, out, _ = capture(60, clock)
    for _ in range(5):
        log.warning("cam-1: report failed: %s", "database is locked")
        log.warning("cam-1: report failed: %s", "disk I/O error")
        log.info("cam-1: now serving detector 1.1.0")
    lines = out.getvalue().splitlines()
    assert lines.count("cam-1: report failed: database is locked") == 1
    assert lines.count("cam-1: report failed: disk I/O error") == 1
    assert lines.count("cam-1: now serving detector 1.1.0") == 5


def test_exceptions_of_another_kind_are_another_cause():
    clock = Clock()
    log, out, f = capture(60, clock)
    for exc in (OSError("disk full"), OSError("disk full"), ValueError("bad json")):
        try:
            raise exc
        except Exception:
            log.exception("cam-1: sync failed unexpectedly; keeping the served model")
    assert out.getvalue().count("sync failed unexpectedly") == 2
    assert f.summary() == [
        "ERROR " + log.name + ": cam-1: sync failed unexpectedly; keeping the served model (OSError: disk full): 1 more time(s) not logged"
    ]


def test_the_agents_loop_does_not_flood_when_its_hub_keeps_failing(make_agent):
    class Failing:
        def desired(self, device_id, model):
            return None

        def report(self, report):
            raise OSError("database is locked")

    clock = Clock()
    log, out, _ = capture(300, clock)
    agent_log = logging.getLogger("edgefleet.agent")
    handler = log.handlers[0]
    agent_log.addHandler(handler)
    try:
        agent = make_agent(transport=Failing())
        stop = threading.Event()
        threading.Timer(0.6, stop.set).start()
        agent.serve_forever(stop, sync_seconds=0.01, report_seconds=0.01)
    finally:
        agent_log.removeHandler(handler)
    assert out.getvalue().count("report failed: database is locked") == 1, out.getvalue()


def test_the_repeat_period_is_a_command_line_option():
    base = ["run", "--hub", "h.sqlite", "--public-key", "k.pem", "--state-dir", "s", "--device-id", "d", "--model", "m"]
    assert parse_command([*base, "--log-repeat-seconds", "30"]).log_repeat_seconds == 30
    assert parse_command(base).log_repeat_seconds == 300
