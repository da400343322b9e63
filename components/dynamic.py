"""What every edgefleet dynamic provider shares: how an input change maps to update or replace, and the ring gate,
which differs between platforms only in the hub it drives (components/rollout/driver.py runs it). Providers read
their inputs through components/props.py."""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult


def input_diff(olds: dict[str, Any], news: dict[str, Any], replace_on: tuple[str, ...]) -> DiffResult:
    """Changed inputs (ignoring Pulumi's own `__` keys); those in `replace_on` force a replacement,
    which Pulumi performs create-before-delete."""
    keys = sorted(k for k in set(olds) | set(news) if not k.startswith("__") and k in news)
    changed = [k for k in keys if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=[k for k in changed if k in replace_on], delete_before_replace=False)


class RingGateProvider(ResourceProvider):
    """Runs the rollout engine until this ring's gate passes (`run_gate`, per platform: the shared driver over its
    hub); on failure the engine rolls the touched rings back and `run_gate` raises, failing the update. Reports only a
    ring the engine passed, and keeps `gate` (what the next ring's deployment waits on) and `measured` across an update."""

    REPLACE_ON: tuple[str, ...] = ("sha256", "version")

    def run_gate(self, props: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def create(self, props: dict[str, Any]) -> CreateResult:
        from components.rollout.engine import passed_ring

        progress = self.run_gate(props)
        ring = passed_ring(progress, props["ring"])  # type: ignore[arg-type]
        return CreateResult(
            id_=f"{progress['rollout_id']}/{props['ring']}",
            outs={**props, "gate": f"{progress['rollout_id']}:{props['ring']}:passed", "measured": ring.get("measured")},
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, self.REPLACE_ON)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "gate": olds.get("gate"), "measured": olds.get("measured")})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the ring keeps running what it runs, and the rollout record stays in the hub."""
