"""edgefleet device agent: receives signed models, swaps them atomically, serves them, reports health.

Its own distribution (agent/pyproject.toml): a device installs `edgefleet-agent`, never the controller. It
imports nothing of the controller; the controller imports its contract (edgefleet_agent/contract/).
"""

__version__ = "0.5.0"
