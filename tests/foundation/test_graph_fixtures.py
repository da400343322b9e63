"""Deployed stacks survive code moves: every shipped stack synthesizes to the resources recorded in
tests/fixtures/graphs (types, names, parents, inputs). A renamed component, a provider moved to another module
or a changed input would make Pulumi replace or delete what a user already deployed; such a change must be
deliberate: regenerate the fixture with `python tests/fixtures/graphs/regenerate.py` and say why in the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.synth import synth

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "graphs"
STACKS = sorted(p.stem for p in FIXTURES.glob("*.json"))


def recorded(graph: dict) -> dict[str, dict]:
    return {r["urn"]: {k: r[k] for k in ("type", "name", "parent", "inputs")} for r in graph["resources"]}


def test_every_shipped_stack_has_a_fixture():
    assert STACKS == sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (REPO / "stacks").glob("Pulumi.*.yaml"))


@pytest.mark.parametrize("stack", STACKS)
def test_synth_gives_the_recorded_resources(stack):
    want = recorded(json.loads((FIXTURES / f"{stack}.json").read_text()))
    got = recorded(json.loads(json.dumps(synth(REPO, stack))))
    assert sorted(got) == sorted(want), "resources added or removed (a URN changed: Pulumi would replace them)"
    changed = [urn for urn in want if got[urn] != want[urn]]
    assert not changed, f"{len(changed)} resources changed, e.g. {changed[0]}"
