"""`edgefleet history`: past rollouts with outcome, rings reached, duration and the failing gate's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from components.local.up import up
from edgefleet.cli import EXIT_INPUT, main
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth

SAMPLES = Path(__file__).resolve().parents[2] / "models" / "samples"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_history_lists_each_rollout_with_its_outcome_and_a_failed_gates_numbers(project, capsys):
    p = project(devices=10, processes=0, soak=0.2)
    [first] = up(p, "local", synth(p, "local"))
    add_version(p / "models" / "detector", SAMPLES / "detector-1.2.0-nan.onnx", "1.2.0", metrics=[parse_metric("accuracy=0.9@eval", set())])
    [bad] = up(p, "local", synth(p, "local"))
    assert (first.status, bad.status) == ("succeeded", "rolled_back")

    code, out, _ = cli(capsys, "history", "--stack", "local", "--json", "--project-dir", str(p))
    assert code == 0
    ok, nan = json.loads(out)
    assert (ok["version"], ok["outcome"], ok["rings_passed"]) == ("1.0.0", "succeeded", ["canary", "early", "broad"])
    assert ok["duration_seconds"] is not None and ok["duration_seconds"] >= 0
    assert (nan["version"], nan["from"], nan["outcome"], nan["failed_ring"]) == ("1.2.0", "1.0.0", "rolled_back", "canary")
    assert nan["rings_reached"] == ["canary"] and any("NaN/Inf" in r for r in nan["reasons"])
    assert nan["measured"]["invalid_output_share"] == 1.0

    code, out, _ = cli(capsys, "history", "--stack", "local", "--model", "other", "--json", "--project-dir", str(p))
    assert code == 0 and json.loads(out) == []
    code, out, _ = cli(capsys, "history", "--stack", "local", "--project-dir", str(p))
    assert code == 0 and "ring canary: invalid (NaN/Inf) outputs" in " ".join(out.split())


def test_history_without_a_stack_names_the_stacks_it_can_read(project, capsys):
    p = project(devices=6, processes=0, soak=0.2)
    code, _, err = cli(capsys, "history", "--project-dir", str(p))
    assert code == EXIT_INPUT and "readable here: none yet" in " ".join(err.split())
    up(p, "local", synth(p, "local"))
    code, _, err = cli(capsys, "history", "--project-dir", str(p))
    assert code == EXIT_INPUT and "--stack: name the stack whose history to show" in err and "readable here: local" in err
