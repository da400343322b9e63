"""scripts/check_agent_install.py's verdict on a resolved set, on made-up distributions (.ci/run runs the real
installs): what it refuses, the chain of requirements it names, extras and markers, and its protobuf rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_agent_install.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_agent_install", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def dist(name: str, version: str = "1.0", *requires: str) -> dict:
    return {"name": name, "version": version, "requires": list(requires)}


AGENT = dist("edgefleet-agent", "0.2.0", "onnxruntime>=1.18,<2", 'boto3>=1.34; extra == "greengrass"')
DEVICE = [AGENT, dist("onnxruntime", "1.32.0", "protobuf>=4.25.8", 'sympy; extra == "symbolic"'), dist("protobuf", "5.29.6")]


def test_the_device_set_passes_and_protobuf_is_reported_not_pinned(check, capsys):
    assert check.check_resolved(DEVICE, None, "(no extra)") == []
    assert "protobuf 5.29.6 installed, required by onnxruntime (protobuf>=4.25.8); not pinned" in capsys.readouterr().out


def test_a_controller_package_is_refused_with_the_requirements_that_pulled_it_in(check):
    dists = [
        dist("edgefleet-agent", "0.2.0", "onnxruntime", 'helper; extra == "greengrass"'),
        dist("onnxruntime"),
        dist("helper", "2.0", "typer>=0.12"),
        dist("typer", "0.29.2", "rich>=13.8.0"),
        dist("rich", "15.0.0"),
        dist("onnx", "1.22.0"),
        dist("pulumi_aws", "7.51.1"),
    ]
    problems = check.check_resolved(dists, "greengrass", "[greengrass]")
    assert problems == [
        "onnx 1.22.0 is installed; pulled in by: (not required by anything in edgefleet-agent's tree)",
        "pulumi_aws 7.51.1 is installed; pulled in by: (not required by anything in edgefleet-agent's tree)",
        'rich 15.0.0 is installed; pulled in by: edgefleet-agent[greengrass] -> helper; extra == "greengrass" -> typer>=0.12 -> rich>=13.8.0',
        'typer 0.29.2 is installed; pulled in by: edgefleet-agent[greengrass] -> helper; extra == "greengrass" -> typer>=0.12',
    ]


def test_onnxruntime_is_expected_and_onnx_and_edgefleet_are_not(check):
    names = ["onnxruntime", "onnxruntime-gpu", "onnx", "edgefleet", "edgefleet-agent", "richer", "pulumi-policy", "numpy"]
    refused = [n for n in names if n.startswith(check.FORBIDDEN_PREFIXES) or n in check.FORBIDDEN_EXACT]
    assert refused == ["onnx", "edgefleet", "richer", "pulumi-policy"]


def test_extras_are_followed_only_when_requested(check):
    dists = [*DEVICE, dist("boto3", "1.44.8", "botocore==1.44.8"), dist("botocore", "1.44.8")]
    chains, _ = check.requirement_tree(dists, None)
    assert "boto3" not in chains and "sympy" not in chains
    chains, _ = check.requirement_tree(dists, "greengrass")
    assert chains["botocore"] == ["edgefleet-agent[greengrass]", 'boto3>=1.34; extra == "greengrass"', "botocore==1.44.8"]


def test_an_extra_requested_further_down_is_followed(check):
    dists = [dist("edgefleet-agent", "0.2.0", "lib[cli]"), dist("lib", "1.0", 'rich; extra == "cli"'), dist("rich")]
    assert check.check_resolved(dists, None, "(no extra)") == [
        'rich 1.0 is installed; pulled in by: edgefleet-agent -> lib[cli] -> rich; extra == "cli"'
    ]


@pytest.mark.parametrize("requirement", ["protobuf~=5.29.5", "protobuf<6", "protobuf==5.29.6", "protobuf<=5.29.6,>=4"])
def test_protobuf_pinned_anywhere_in_the_tree_fails(check, requirement):
    dists = [*DEVICE, dist("edgefleet-agent", "0.2.0", "onnxruntime", "shim-lib"), dist("shim-lib", "1", requirement)]
    dists = [d for d in dists if d is not AGENT]
    problems = check.check_resolved(dists, None, "(no extra)")
    assert problems == [f"protobuf 5.29.6 is pinned by shim-lib: edgefleet-agent -> shim-lib -> {requirement}"]


def test_a_protobuf_floor_or_exclusion_is_not_a_pin(check):
    dists = [d for d in DEVICE if d is not AGENT] + [
        dist("edgefleet-agent", "0.2.0", "onnxruntime", "x"),
        dist("x", "1", "protobuf>=5,!=5.0.1"),
    ]
    assert check.check_resolved(dists, None, "(no extra)") == []
