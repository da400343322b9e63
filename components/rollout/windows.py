"""Maintenance windows: the device agent's contract holds the one implementation (edgefleet_agent/contract/windows.py),
so the controller's engine and the devices read a group's cron the same way. Re-exported here for the engine, the
spec and the plan."""

from __future__ import annotations

from edgefleet_agent.contract.windows import HORIZON_DAYS, MaintenanceWindow, Windows, check_timezone, never_opens

__all__ = ["HORIZON_DAYS", "MaintenanceWindow", "Windows", "check_timezone", "never_opens"]
