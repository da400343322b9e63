"""Recipes validate against the Greengrass Development Kit's schema, the way `gdk` validates them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from aws_testkit import PROJECT, Graph

from components.aws.recipes import SCHEMA, agent_recipe, model_recipe, recipe_text
from components.aws.recipes import recipe_errors as gdk_errors
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelDir

SHARED_SCHEMA = PROJECT.parent / "shared" / "reference" / "greengrass" / "recipe_schema.json"


def _manifest():
    mdir = ModelDir(PROJECT / "models" / "detector")
    return mdir.load(), mdir.manifest_bytes().decode()


def test_vendored_schema_is_the_shared_reference():
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"{SHARED_SCHEMA} is not present in this checkout; the vendored copy is used as is")
    assert SCHEMA.read_bytes() == SHARED_SCHEMA.read_bytes()


@pytest.mark.parametrize("name", ["detector-model-component", "detector-agent-component"])
def test_declared_recipes_validate_against_the_gdk_schema(graph: Graph, name: str):
    recipe = json.loads(graph.named(name)["inputs"]["inlineRecipe"])
    assert gdk_errors(recipe) == []


def test_model_recipe_for_every_target_architecture_validates():
    manifest, text = _manifest()
    three = manifest.model_copy(
        update={"targets": [*manifest.targets, manifest.targets[1].model_copy(update={"name": "pi", "arch": "armv7"})]}
    )
    recipe = model_recipe(
        "edgefleet.dev.detector.Model", three, text, '{"format": "edgefleet-signature/v1"}', "s3://b/models/detector/x.onnx"
    )
    assert gdk_errors(recipe) == []
    assert [m["Platform"]["architecture"] for m in recipe["Manifests"]] == ["aarch64", "amd64", "arm"]
    assert json.loads(recipe_text(recipe)) == recipe


def test_agent_recipe_validates_and_keeps_values_out_of_the_shell():
    manifest, text = _manifest()
    recipe = agent_recipe(
        "edgefleet.dev.detector.Agent",
        "0.1.0",
        "detector",
        "edgefleet.dev.detector.Model",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-dev/agent:0.1.0",
        "Edgefleet/Agent",
        "-----BEGIN PUBLIC KEY-----\nMFk...\n-----END PUBLIC KEY-----\n",
    )
    assert gdk_errors(recipe) == []
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    assert lifecycle["Setenv"]["EDGEFLEET_MODEL_MANIFEST"] == "{edgefleet.dev.detector.Model:configuration:/Manifest}"
    assert lifecycle["Setenv"]["EDGEFLEET_ROLLBACK_ORDER"] == "{edgefleet.dev.detector.Model:configuration:/RollbackOrder}"
    script = lifecycle["Run"]["Script"]
    assert "BEGIN PUBLIC KEY" not in script and "-e EDGEFLEET_MODEL_MANIFEST" in script
    assert "{edgefleet.dev.detector.Model:artifacts:path}:/models:ro" in script
    deps = recipe["ComponentDependencies"]
    assert set(deps) == {"edgefleet.dev.detector.Model", "aws.greengrass.DockerApplicationManager", "aws.greengrass.TokenExchangeService"}
    install = lifecycle["Install"]["Script"]
    assert "--install-only" in install and "--install-only" not in script, (
        "a refused model must fail Install, so the deployment fails on the device before the component runs"
    )
    assert "BEGIN PUBLIC KEY" not in install and "{edgefleet.dev.detector.Model:artifacts:path}:/models:ro" in install


@pytest.mark.parametrize(
    "break_it, where",
    [
        (lambda r: r.pop("ComponentVersion"), "componentversion"),
        (lambda r: r["Manifests"][0]["Artifacts"][0].update(Unarchive="TAR"), "unarchive"),
        (lambda r: r.update(RecipeFormatVersion="2021-01-01"), "recipeformatversion"),
        (lambda r: r.update(ComponentName="has space"), "componentname"),
    ],
)
def test_the_validation_rejects_broken_recipes(break_it, where):
    manifest, text = _manifest()
    recipe = copy.deepcopy(model_recipe("edgefleet.dev.detector.Model", manifest, text, "{}", "s3://b/k.onnx"))
    break_it(recipe)
    errors = gdk_errors(recipe)
    assert errors and any(where in e for e in errors), errors


def test_validation_is_case_insensitive_like_gdk():
    manifest, text = _manifest()
    recipe = model_recipe("edgefleet.dev.detector.Model", manifest, text, "{}", "s3://b/k.onnx")
    shouted = {k.upper(): v for k, v in recipe.items()}
    assert gdk_errors(shouted) == []
    assert Path(SCHEMA).is_file()


def test_a_recipe_the_schema_rejects_is_refused_before_it_is_declared():
    manifest, text = _manifest()
    recipe = model_recipe("edgefleet.dev.detector.Model", manifest, text, "{}", "s3://b/models/detector/x.onnx")
    recipe["ComponentVersion"] = 7  # the schema wants a string
    with pytest.raises(EdgefleetError) as info:
        recipe_text(recipe)
    assert str(info.value).startswith("Greengrass recipe edgefleet.dev.detector.Model: does not validate against the GDK recipe schema")
    assert "componentversion: 7 is not of type 'string'" in str(info.value)


def test_a_model_version_greengrass_cannot_take_is_refused_before_anything_is_declared(tmp_path):
    """Valid semver, but longer than a ComponentVersion may be: caught at declaration, not after the upload and
    the KMS signature (the real recipe is built inside an Output apply, which a preview never runs)."""
    from aws_testkit import project_copy, synth_graph

    project = project_copy(tmp_path)
    manifest = project / "models" / "detector" / "model.yaml"
    long_version = "1.0.0-" + "rc" * 32
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", f"version: {long_version}", 1))
    with pytest.raises(EdgefleetError) as info:
        synth_graph(project, "aws-dev")
    assert str(info.value).startswith(
        f"stacks/Pulumi.aws-dev.yaml: edgefleet:models[0]: the Greengrass model component recipe for "
        f"detector {long_version} does not validate against the GDK recipe schema: componentversion:"
    )
    assert "is too long" in str(info.value) and "model.yaml" in info.value.fix
