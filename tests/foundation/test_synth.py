"""`edgefleet synth`: the local stack's declared graph, offline under Pulumi's mocks, deterministic, secrets redacted."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from edgefleet.synth import GRAPH_FORMAT, SECRET, dumps, synth
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelDir

from .conftest import assert_user_error, copy_project, local_stack_config, write_stack

DYN = "pulumi-python:dynamic/edgefleet-local:"
RINGS = ["canary", "early", "broad"]


@pytest.fixture(scope="module")
def local_project(tmp_path_factory) -> Path:
    return copy_project(tmp_path_factory.mktemp("synth") / "project")


@pytest.fixture(scope="module")
def graph(local_project) -> dict:
    return synth(local_project, "local")


@pytest.fixture(scope="module")
def by_name(graph) -> dict[str, dict]:
    """Resources by name, for the names only one resource has (the model and the rollout are both `detector`)."""
    counts = Counter(r["name"] for r in graph["resources"])
    return {r["name"]: r for r in graph["resources"] if counts[r["name"]] == 1}


def find(graph: dict, type_: str, name: str) -> dict:
    (match,) = [r for r in graph["resources"] if r["type"] == type_ and r["name"] == name]
    return match


def test_graph_header(graph, local_project):
    assert graph["format"] == GRAPH_FORMAT
    assert (graph["project"], graph["stack"], graph["stack_file"]) == ("edgefleet", "local", "stacks/Pulumi.local.yaml")
    raw = {k.removeprefix("edgefleet:"): v for k, v in local_stack_config().items()}
    assert graph["config"] == json.loads(json.dumps(raw))


def test_resource_types_and_counts(graph):
    assert Counter(r["type"] for r in graph["resources"]) == {
        "edgefleet:fleet:DeviceGroup": 1,
        "edgefleet:models:ModelVersion": 1,
        "edgefleet:registry:AppRegistry": 1,
        "edgefleet:signing:SigningKey": 1,
        "edgefleet:storage:ModelStore": 1,
        "edgefleet:rollout:Rollout": 1,
        "edgefleet:rollout:Ring": 3,
        f"{DYN}SigningKey": 1,
        f"{DYN}ModelStore": 1,
        f"{DYN}Artifact": 1,
        f"{DYN}RingDeployment": 3,
        f"{DYN}RingGate": 3,
    }
    assert all(r["custom"] == r["type"].startswith("pulumi-python:dynamic/") for r in graph["resources"])
    assert [r["urn"] for r in graph["resources"]] == sorted(r["urn"] for r in graph["resources"])


def test_every_record_has_the_documented_fields(graph):
    for r in graph["resources"]:
        assert {"urn", "type", "name", "parent", "inputs", "dependencies", "property_dependencies", "options", "custom"} <= set(r)
        assert r["dependencies"] == sorted(set(r["dependencies"]))


def test_urns_follow_pulumi_parent_type_chains(graph, by_name):
    assert (
        find(graph, "edgefleet:models:ModelVersion", "detector")["urn"]
        == "urn:pulumi:local::edgefleet::edgefleet:models:ModelVersion::detector"
    )
    gate = by_name["detector-canary-gate"]
    assert gate["urn"] == (
        f"urn:pulumi:local::edgefleet::edgefleet:rollout:Rollout$edgefleet:rollout:Ring${DYN}RingGate::detector-canary-gate"
    )
    assert by_name["cameras"]["urn"] == "urn:pulumi:local::edgefleet::edgefleet:fleet:DeviceGroup::cameras"


def test_parents(graph):
    urn = {(r["type"], r["name"]): r["urn"] for r in graph["resources"]}
    parent_of = {(r["type"], r["name"]): r["parent"] for r in graph["resources"]}
    for top in (
        "edgefleet:fleet:DeviceGroup",
        "edgefleet:models:ModelVersion",
        "edgefleet:registry:AppRegistry",
        "edgefleet:signing:SigningKey",
        "edgefleet:storage:ModelStore",
        "edgefleet:rollout:Rollout",
    ):
        assert all(parent is None for (t, _), parent in parent_of.items() if t == top), top  # children of the stack
    rollout = urn[("edgefleet:rollout:Rollout", "detector")]
    for ring in RINGS:
        ring_urn = urn[("edgefleet:rollout:Ring", f"detector-{ring}")]
        assert parent_of[("edgefleet:rollout:Ring", f"detector-{ring}")] == rollout
        assert parent_of[(f"{DYN}RingDeployment", f"detector-{ring}-deployment")] == ring_urn
        assert parent_of[(f"{DYN}RingGate", f"detector-{ring}-gate")] == ring_urn
    assert parent_of[(f"{DYN}Artifact", "detector-local-artifact")] == urn[("edgefleet:models:ModelVersion", "detector")]
    assert parent_of[(f"{DYN}SigningKey", "local-signing-keyfile")] == urn[("edgefleet:signing:SigningKey", "local-signing")]
    assert parent_of[(f"{DYN}ModelStore", "local-models-dir")] == urn[("edgefleet:storage:ModelStore", "local-models")]


def test_ring_chain_dependencies(by_name):
    """Ring N+1's deployment depends on ring N's gate; each gate depends on its own ring's deployment."""
    first = by_name["detector-canary-deployment"]
    assert "after" not in first["inputs"] and "after" not in first["property_dependencies"]
    for prev, ring in itertools.pairwise(RINGS):
        deployment = by_name[f"detector-{ring}-deployment"]
        prev_gate = by_name[f"detector-{prev}-gate"]
        assert deployment["property_dependencies"]["after"] == [prev_gate["urn"]]
        assert prev_gate["urn"] in deployment["dependencies"]
        assert deployment["inputs"]["after"] == f"detector:{prev}:[computed at deploy]"
    for i, ring in enumerate(RINGS):
        gate = by_name[f"detector-{ring}-gate"]
        deployment = by_name[f"detector-{ring}-deployment"]
        assert gate["property_dependencies"]["deployment"] == [deployment["urn"]]
        assert (deployment["inputs"]["index"], deployment["inputs"]["total_rings"], deployment["inputs"]["ring"]) == (i, 3, ring)
        assert [r["name"] for r in deployment["inputs"]["rings"]] == RINGS[: i + 1]
        assert gate["inputs"]["gate_config"]["soak_seconds"] == 4
        # later rings never depend on anything after them
        later = {by_name[f"detector-{r}-gate"]["urn"] for r in RINGS[i:]}
        assert not later & set(deployment["dependencies"])


def test_artifact_waits_for_store_and_key(by_name):
    art = by_name["detector-local-artifact"]
    assert art["dependencies"] == sorted([by_name["local-models-dir"]["urn"], by_name["local-signing-keyfile"]["urn"]])
    assert art["inputs"]["source"] == "models/detector/detector.onnx"  # project-relative: same graph in any checkout


def test_model_version_inputs_and_outputs(graph, local_project):
    manifest = ModelDir(local_project / "models" / "detector").load()
    mv = find(graph, "edgefleet:models:ModelVersion", "detector")
    assert mv["inputs"]["version"] == "1.0.0" and mv["inputs"]["sha256"] == manifest.sha256 and mv["inputs"]["size"] == 2364
    assert mv["inputs"]["manifest"] == json.loads(json.dumps(manifest.model_dump(mode="json")))
    outputs = mv["outputs"]
    assert {"version", "digest", "size", "signature"} <= set(outputs)
    assert (outputs["version"], outputs["digest"], outputs["size"]) == ("1.0.0", manifest.sha256, 2364)
    assert outputs["signature"] == "[computed at deploy]"  # made by the provider at deploy time, never faked
    assert outputs["publications"]["local"]["uri"] == "[computed at deploy]"


def test_component_outputs_are_recorded(graph, by_name):
    assert set(by_name["detector-early"]["outputs"]) == {"deployment", "gate", "devices"}
    assert find(graph, "edgefleet:rollout:Rollout", "detector")["inputs"]["rings"] == RINGS
    group = by_name["cameras"]
    assert json.loads(group["outputs"]["target"]) == {"labels": {"site": "plant-a"}, "devices": []}


def test_synth_is_deterministic(local_project, graph):
    again = synth(local_project, "local")
    assert dumps(again) == dumps(graph)
    assert str(local_project) not in dumps(graph)  # no absolute paths: other checkouts produce the same bytes


def test_same_bytes_from_another_checkout(tmp_path, graph):
    other = copy_project(tmp_path / "elsewhere" / "checkout")
    assert dumps(synth(other, "local")) == dumps(graph)


def test_synth_cli_writes_the_graph(run_cli, project_copy, tmp_path, graph):
    out1, out2 = tmp_path / "g1.json", tmp_path / "sub" / "g2.json"
    res = run_cli("synth", "--stack", "local", "--project-dir", project_copy, "--out", out1)
    assert res.code == 0, res.err
    assert f"wrote {out1}: 18 resources in stack local" in res.out_text
    assert run_cli("synth", "--stack", "local", "--project-dir", project_copy, "-o", out2).code == 0
    assert out1.read_bytes() == out2.read_bytes() == dumps(graph).encode()
    res = run_cli("synth", "--stack", "local", "--project-dir", project_copy)  # stdout
    assert res.code == 0 and res.out == dumps(graph)


def test_synth_cli_from_the_project_dir(run_cli, project_copy):
    res = run_cli("synth", "-s", "local", cwd=project_copy)
    assert res.code == 0 and json.loads(res.out)["stack"] == "local"


def test_the_stack_is_validated_once_per_synth(local_project, graph, monkeypatch):
    """synth hands its parse to the program, which reads the same texts back from Pulumi's config (issue 14)."""
    import edgefleet.program as program
    import edgefleet.synth as synth_mod

    calls = []
    real = synth_mod.parse_stack_config

    def counting(raw, source):
        calls.append(source)
        return real(raw, source)

    monkeypatch.setattr(synth_mod, "parse_stack_config", counting)
    monkeypatch.setattr(program, "parse_stack_config", counting)
    assert dumps(synth(local_project, "local")) == dumps(graph)
    assert calls == ["stacks/Pulumi.local.yaml"] and program._handed_over is None  # taken once, then gone


def test_the_program_validates_config_texts_other_than_those_handed_over(local_project, graph, monkeypatch):
    import edgefleet.program as program

    real = program.hand_over_parsed
    monkeypatch.setattr(program, "hand_over_parsed", lambda source, texts, parsed: real(source, {**texts, "edgefleet:x": "1"}, None))
    assert dumps(synth(local_project, "local")) == dumps(graph)  # the handed-over None was not used


def test_synth_restores_the_working_directory(local_project):
    cwd = os.getcwd()
    synth(local_project, "local")
    assert os.getcwd() == cwd


def test_provider_secrets_in_the_stack_file_never_reach_the_graph(project_copy):
    cfg = local_stack_config()
    cfg["aws:secretKey"] = {"secure": "v1:c2VjcmV0LXZhbHVl"}
    cfg["someprovider:token"] = "plain-token-value"
    write_stack(project_copy, "test", cfg)
    text = dumps(synth(project_copy, "test"))
    assert "c2VjcmV0LXZhbHVl" not in text and "plain-token-value" not in text


def test_secret_outputs_are_redacted_in_inputs_and_outputs():
    """A tiny program under the same recording monitor synth uses: secret Outputs become "[secret]"."""
    import pulumi
    from pulumi.runtime import settings

    from edgefleet.synth import _clean, _monitor_and_mocks

    monitor, mocks = _monitor_and_mocks("t", "p", "us-east-1")
    settings.ROOT.set(None)
    pulumi.runtime.set_all_config({}, [])
    pulumi.runtime.set_mocks(mocks, project="p", stack="t", preview=False, monitor=monitor)

    class Thing(pulumi.CustomResource):
        def __init__(self, name, props, opts=None):
            super().__init__("test:index:Thing", name, props, opts)

    class Holder(pulumi.ComponentResource):
        def __init__(self, name):
            super().__init__("test:index:Holder", name, {"token": pulumi.Output.secret("hunter2-component")})
            Thing(
                f"{name}-thing",
                {
                    "password": pulumi.Output.secret("hunter2-input"),
                    "plain": "visible",
                    "nested": {"key": pulumi.Output.secret("hunter2-nested")},
                },
                pulumi.ResourceOptions(parent=self),
            )
            self.register_outputs({"out": pulumi.Output.secret("hunter2-output"), "shown": "ok"})

    pulumi.runtime.test(lambda: Holder("h"))()
    records = {r["name"]: r for r in monitor.records.values()}
    assert records["h"]["inputs"] == {"token": SECRET}
    assert records["h"]["outputs"] == {"out": SECRET, "shown": "ok"}
    assert records["h-thing"]["inputs"] == {"password": SECRET, "plain": "visible", "nested": SECRET}
    assert records["h-thing"]["parent"] == records["h"]["urn"] == "urn:pulumi:t::p::test:index:Holder::h"
    assert records["h-thing"]["urn"] == "urn:pulumi:t::p::test:index:Holder$test:index:Thing::h-thing"
    assert "hunter2" not in json.dumps(list(monitor.records.values()))
    assert _clean({"a": 2.0, "b": [1.5, 3.0], "__provider": "pickled"}) == {"a": 2, "b": [1.5, 3]}


# -- errors the program reports, naming the stack file and key ------------------------------------------------------
def synth_error(project: Path, cfg: dict) -> EdgefleetError:
    write_stack(project, "test", cfg)
    with pytest.raises(EdgefleetError) as info:
        synth(project, "test")
    return info.value


def test_model_path_without_manifest(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:models"] = [{"path": "models/nothere"}]
    err = synth_error(project_copy, cfg)
    assert str(err).startswith("stacks/Pulumi.test.yaml: edgefleet:models[0].path: models/nothere has no model.yaml")


@pytest.mark.parametrize(
    "damage, found",
    [
        (lambda f: f.unlink(), "models/detector/detector.onnx is missing"),
        (lambda f: f.write_bytes(f.read_bytes()[:100]), "models/detector/detector.onnx is 100 bytes, the manifest pins"),
    ],
)
def test_a_model_file_missing_or_cut_short_fails_synth_instead_of_declaring_it(project_copy, damage, found):
    """Checked before anything is declared: `pulumi preview` would otherwise show a model it cannot ship."""
    damage(project_copy / "models" / "detector" / "detector.onnx")
    err = synth_error(project_copy, local_stack_config())
    assert str(err).startswith(f"stacks/Pulumi.test.yaml: edgefleet:models[0].path: {found}")
    assert "edgefleet model add models/detector" in err.fix


def test_model_listed_twice(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:models"] = [{"path": "models/detector"}, {"path": "models/../models/detector"}]
    assert "edgefleet:models[1].path: model 'detector' is listed twice" in str(synth_error(project_copy, cfg))


def test_rollout_of_an_unknown_model(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:rollouts"][0]["model"] = "classifier"
    err = synth_error(project_copy, cfg)
    assert err.where == "stacks/Pulumi.test.yaml"
    assert err.problem == "edgefleet:rollouts[0].model: no model named 'classifier' among edgefleet:models (detector)"


def test_model_targets_match_no_group_hardware(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:groups"][0]["hardware"]["arch"] = "armv7"
    err = synth_error(project_copy, cfg)
    assert err.problem.startswith(
        "edgefleet:rollouts[0].model: model 'detector' targets x86-camera, jetson-orin, which match "
        "no hardware of groups cameras (see models/detector/model.yaml)"
    )


def test_invalid_manifest_is_named(project_copy):
    path = project_copy / "models" / "detector" / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["extra"] = 1
    path.write_text(yaml.safe_dump(doc))
    err = synth_error(project_copy, local_stack_config())
    assert str(err).startswith(f"{path}: extra: unknown key")


def test_not_a_pulumi_project(run_cli, tmp_path):
    assert_user_error(
        run_cli("synth", "--stack", "local", "--project-dir", tmp_path),
        f"error: {tmp_path / 'Pulumi.yaml'}: not a Pulumi project (no Pulumi.yaml)",
    )


def test_bad_program_config_through_the_cli(run_cli, project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:rollouts"][0]["model"] = "classifier"
    write_stack(project_copy, "test", cfg)
    assert_user_error(
        run_cli("synth", "--stack", "test", "--project-dir", project_copy),
        "error: stacks/Pulumi.test.yaml: edgefleet:rollouts[0].model: no model named 'classifier'",
    )


def test_main_py_is_the_program_pulumi_runs(local_project):
    """`__main__.py` (what `pulumi up` executes) declares the same graph, with config handed over as the engine does."""
    import runpy

    import pulumi
    from pulumi.runtime import settings

    from edgefleet.config import read_stack_file, to_pulumi_config
    from edgefleet.synth import _monitor_and_mocks

    raw, _ = read_stack_file(local_project, "local")
    monitor, mocks = _monitor_and_mocks("local", "edgefleet", "us-east-1")
    settings.ROOT.set(None)
    pulumi.runtime.set_all_config(to_pulumi_config(raw), [])
    pulumi.runtime.set_mocks(mocks, project="edgefleet", stack="local", preview=False, monitor=monitor)
    cwd = os.getcwd()
    os.chdir(local_project)
    try:

        def program() -> None:
            runpy.run_path(str(local_project / "__main__.py"), run_name="__main__")

        pulumi.runtime.test(program)()
    finally:
        os.chdir(cwd)
    types = Counter(r["type"] for r in monitor.records.values())
    assert types["edgefleet:models:ModelVersion"] == 1 and types[f"{DYN}RingGate"] == 3 and sum(types.values()) == 18


def test_same_bytes_across_processes(local_project, tmp_path, graph):
    """Two `edgefleet synth` processes with different hash seeds write identical files (no set/dict-order leaks)."""
    import subprocess

    from .conftest import EDGEFLEET_BIN

    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"graph-{seed}.json"
        subprocess.run(
            [str(EDGEFLEET_BIN), "synth", "--stack", "local", "--project-dir", str(local_project), "--out", str(out)],
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=120,
        )
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == dumps(graph).encode()
