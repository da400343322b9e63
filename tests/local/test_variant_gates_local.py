"""Gates per build over the local hub, as `edgefleet up` runs them: devices report the build they serve
(DeviceReport.variant), the hub observes each build's devices on their own, and a ring passes only if every build does.
A version whose int8 build ignores its input (it answers class 0 whatever it is asked) on the int8 devices, while its
fp32 build answers well on the others, stops in the canary naming int8, though the canary as a whole agrees enough."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from components.local.plan import ring_plans
from edgefleet_agent.contract.state import DeviceReport
from tests.local.test_quality_local import BLIND, CLOSE, GOOD, ScriptedFleet, roll, setup
from tests.rollout.fakes import desired

V1, V2 = desired("1.0.0"), desired("1.1.0")


class BuildsFleet(ScriptedFleet):
    """The scripted fleet, where the devices of `int8` serve that build of each version and answer as `int8_answers`
    say, the others the reference (fp32)."""

    def __init__(self, inner: ScriptedFleet, int8: set[str], int8_answers: dict[str, list[int]]) -> None:
        super().__init__(inner.hub, inner.devices, inner.answers)
        self.int8, self.int8_answers = int8, int8_answers

    def step(self) -> None:
        put = self.hub.put_reports
        fp32_answers = self.answers

        def tagged(reports: list[DeviceReport]) -> None:
            put([replace(r, variant="int8" if r.device_id in self.int8 else "fp32") for r in reports])

        self.hub.put_reports = tagged  # type: ignore[method-assign]
        try:
            fp32 = [d for d in self.devices if d not in self.int8]
            for ids, answers in ((fp32, fp32_answers), (sorted(self.int8), self.int8_answers)):
                self.devices, self.answers = ids, answers
                super().step()
        finally:
            self.devices, self.answers = sorted({*self.devices, *self.int8, *fp32}), fp32_answers
            self.hub.put_reports = put  # type: ignore[method-assign]


def test_a_bad_int8_build_stops_the_canary_by_name_where_the_canary_as_a_whole_would_pass(tmp_path: Path):
    rollout, groups, hub, clock, signer = setup(tmp_path, {"1.0.0": GOOD, "1.1.0": CLOSE})
    canary = sorted(ring_plans(hub, rollout, groups)[0].target.selector)
    everyone = clock.fleet[0].devices
    int8 = set(canary[:2]) | (set(everyone[::4]) - set(canary))  # 2 of the canary's 10, a quarter of the rest
    clock.fleet[0] = BuildsFleet(clock.fleet[0], int8, {"1.0.0": GOOD, "1.1.0": BLIND})

    first, _ = roll(rollout, groups, hub, clock, signer, V1)
    assert first["status"] == "succeeded", first["report"]
    assert {r.variant for r in hub.reports("detector").values()} == {"fp32", "int8"}
    progress, _ = roll(rollout, groups, hub, clock, signer, V2)

    assert progress["status"] == "rolled_back", progress["report"]
    canary_ring = next(r for r in progress["rings"] if r["name"] == "canary")
    verdict = canary_ring["verdict"]
    assert verdict["reasons"][0].startswith("variant int8 (2 devices): shadow agreement 33.3% < min 70.0%"), verdict["reasons"]
    assert not any(r.startswith("variant fp32") for r in verdict["reasons"]), "the good build is not blamed"
    measured = verdict["measured"]
    assert measured["variants"]["int8"]["quality"]["agreement"] == round(1 / 3, 4)
    assert measured["variants"]["fp32"]["quality"]["agreement"] == round(11 / 12, 4)
    whole = measured["quality"]["agreement"]
    assert whole >= 0.7, f"the canary as a whole agrees {whole:.1%}: the bad build would have hidden behind the good one"
    assert hub.ever_served("detector", "1.1.0") == [], "stopped in the shadow phase: nobody served the bad version"
