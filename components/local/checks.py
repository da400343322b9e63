"""Load-time checks for stacks with local groups: every simulated device's hardware is its groups' profile, which
plans, policies and model targets are checked against (a batch that says otherwise is a config error)."""

from __future__ import annotations

from typing import Any

from components.local.fleet import local_devices
from components.stack import PROJECT, Problem
from edgefleet_agent.contract.errors import ConfigError


def check_stack(cfg: Any) -> list[Problem]:
    try:
        local_devices(cfg)
    except ConfigError as exc:
        key, _, problem = exc.problem.partition(": ")
        return [(key.removeprefix(f"{PROJECT}:"), problem, exc.fix or "")]
    return []
