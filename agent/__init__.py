"""edgefleet device agent: receives signed models, swaps them atomically, serves them, reports health.

Kept import-light: `python -m agent` and the local fleet's simulator import the modules they need
(`agent.core`, `agent.transport`), never Pulumi, typer or the edgefleet CLI.
"""

__version__ = "0.1.0"
