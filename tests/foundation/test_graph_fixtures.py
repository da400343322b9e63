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


@pytest.mark.parametrize("stack", ["aws-dev", "azure-dev"])
def test_a_preview_shows_the_same_dependencies_as_an_up(stack):
    """Under `pulumi preview` of a new stack, invokes that read a resource not yet created (KMS public key, IoT Hub keys,
    a storage SAS) return unknown results without dependencies; what consumes them must still depend on that resource,
    or policies in a preview see a thinner graph than `edgefleet synth` shows."""
    up = {r["urn"]: set(r["dependencies"]) for r in synth(REPO, stack)["resources"]}
    preview = {r["urn"]: set(r["dependencies"]) for r in synth(REPO, stack, preview=True)["resources"]}
    assert sorted(preview) == sorted(up)
    thinner = {urn.split("::")[-1]: sorted(d.split("::")[-1] for d in up[urn] - preview[urn]) for urn in up if up[urn] - preview[urn]}
    assert not thinner, thinner
