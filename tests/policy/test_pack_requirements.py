"""The pack's virtualenv gets the versions the project tests with: policies/requirements.txt against constraints.txt."""

from __future__ import annotations

import tomllib
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def specs(lines) -> dict[str, Requirement]:
    reqs = [Requirement(line.split("#", 1)[0].strip()) for line in lines if line.split("#", 1)[0].strip()]
    return {canonicalize_name(r.name): r for r in reqs}


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            out[canonicalize_name(name)] = version.strip()
    return out


def test_the_pack_requires_the_tested_pulumi_policy_and_a_consistent_pulumi():
    pack = specs((ROOT / "policies" / "requirements.txt").read_text().splitlines())
    tested = pins()
    assert set(pack) == {"pulumi-policy", "pulumi"}
    policy = pack["pulumi-policy"]
    assert policy.specifier.contains(tested["pulumi-policy"])
    assert any(s.operator == ">=" and s.version == ".".join(tested["pulumi-policy"].split(".")[:2]) for s in policy.specifier), (
        "the floor is the tested minor version, not an older untested one"
    )
    assert pack["pulumi"].specifier.contains(tested["pulumi"])
    program = specs(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert program["pulumi"].specifier.contains(tested["pulumi"]) and program["pulumi-policy"].specifier.contains(tested["pulumi-policy"])
    needs = next(Requirement(r) for r in requires("pulumi-policy") or [] if canonicalize_name(Requirement(r).name) == "pulumi")
    floor = next(s.version for s in needs.specifier if s.operator == ">=")
    assert pack["pulumi"].specifier.contains(floor), f"the pack's pulumi range must admit what pulumi-policy needs ({needs})"
