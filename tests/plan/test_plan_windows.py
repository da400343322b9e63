"""`edgefleet plan` under maintenance windows: each ring's earliest completion beside its next opening, and the
rollout's, in the Markdown and the JSON (windows.earliest_schedule, as if the change went out now)."""

from __future__ import annotations

from datetime import datetime, timezone

import yaml
from test_plan import bump_to_1_1_0, plan_for

import edgefleet.plan.diff as diff

NOW = datetime(2026, 12, 7, 0, 0, tzinfo=timezone.utc).timestamp()  # Berlin is on CET: its 02:00 is 01:00 UTC


def test_each_ring_and_the_rollout_show_their_earliest_completion(fleet_repo, monkeypatch):
    """The cameras may swap 02:00-03:00 Berlin time. The canary shadows 30 min then soaks 30 min (its serve swap at
    01:30 UTC is still in tonight's window) and completes at 02:00 UTC, as the window closes; the early ring cannot
    start before tomorrow's opening, and the broad ring and the control holdback follow it seconds later."""
    monkeypatch.setattr(diff, "_now", lambda: NOW)
    bump_to_1_1_0(fleet_repo)
    path = fleet_repo / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    cfg = doc["config"]
    cfg["edgefleet:groups"][0].update(timezone="Europe/Berlin", maintenance_windows=[{"cron": "0 2 * * *", "minutes": 60}])
    canary = cfg["edgefleet:rollouts"][0]["rings"][0]["gate"]
    canary.update(soak_seconds=1800, shadow_soak_seconds=1800, deadline_seconds=7200)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    plan, md = plan_for(fleet_repo)

    (rollout,) = plan["rollouts"]
    rows = {r["name"]: r for r in rollout["rings"]}
    assert rows["canary"]["next_window"] == "2026-12-07 01:00 UTC"
    assert (rows["canary"]["earliest_start"], rows["canary"]["earliest_completion"]) == ("2026-12-07 01:00 UTC", "2026-12-07 02:00 UTC")
    assert rows["canary"]["earliest_completion_in"] == "+2h 00m"
    assert rows["early"]["earliest_start"] == "2026-12-08 01:00 UTC" and rows["early"]["earliest_completion_in"] == "+25h 00m"
    assert rows["broad"]["earliest_completion"] == "2026-12-08 01:00 UTC"
    assert (rollout["earliest_completion"], rollout["earliest_completion_in"]) == ("2026-12-08 01:00 UTC", "+25h 00m")
    assert rollout["earliest_completion_seconds"] == 25 * 3600 + 3 * 4  # early, broad and the holdback soak 4 s each
    assert (
        "- ring `canary` deploys only in its group's maintenance windows (0 2 * * * for 60 min (Europe/Berlin)): next opens "
        "2026-12-07 01:00 UTC; earliest completion 2026-12-07 02:00 UTC (+2h 00m from now)" in md
    )
    assert (
        "- the rollout completes at the earliest 2026-12-08 01:00 UTC (+25h 00m from now), after the control holdback "
        "follows the last ring" in md
    )
    assert "next opens 2026-12-07 01:00 UTC; earliest start 2026-12-08 01:00 UTC, earliest completion 2026-12-08 01:00 UTC" in md


def test_a_rollout_without_windows_plans_as_before(fleet_repo, monkeypatch):
    monkeypatch.setattr(diff, "_now", lambda: NOW)
    bump_to_1_1_0(fleet_repo)
    plan, md = plan_for(fleet_repo)
    (rollout,) = plan["rollouts"]
    assert not {"earliest_completion", "earliest_completion_in", "earliest_completion_seconds"} & set(rollout)
    assert not any("earliest_completion" in row for row in rollout["rings"])
    assert "earliest" not in md
