"""Recipes validate against the Greengrass Development Kit's schema, the way `gdk` validates them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from aws_testkit import PROJECT, Graph

from components.aws.recipes import SCHEMA, VERDICT_WAIT_SECONDS, agent_recipe, model_recipe, recipe_text
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


AGENT = "edgefleet.dev.Agent"


def _model_recipe(manifest, text, signature="{}", uri="s3://b/k.onnx", component="edgefleet.dev.detector.Model"):
    return model_recipe(component, manifest, text, signature, uri, AGENT, "0.4.0")


@pytest.mark.parametrize("name", ["detector-model-component", "aws-greengrass-agent-component"])
def test_declared_recipes_validate_against_the_gdk_schema(graph: Graph, name: str):
    recipe = json.loads(graph.named(name)["inputs"]["inlineRecipe"])
    assert gdk_errors(recipe) == []


def test_model_recipe_for_every_target_architecture_validates():
    manifest, text = _manifest()
    three = manifest.model_copy(
        update={"targets": [*manifest.targets, manifest.targets[1].model_copy(update={"name": "pi", "arch": "armv7"})]}
    )
    recipe = _model_recipe(three, text, '{"format": "edgefleet-signature/v1"}', "s3://b/models/detector/x.onnx")
    assert gdk_errors(recipe) == []
    assert [m["Platform"]["architecture"] for m in recipe["Manifests"]] == ["aarch64", "amd64", "arm"]
    assert json.loads(recipe_text(recipe)) == recipe


def test_model_recipe_hands_over_to_the_agent_without_restarting_it():
    """The model component depends on the stack's one agent (HARD: started once the agent runs; it restarts the model
    component, never the agent), hands its configuration over through Setenv (never spliced into the script), and
    waits for the verdict in Startup, which Greengrass waits for before it reports the deployment."""
    manifest, text = _manifest()
    recipe = _model_recipe(manifest, text)
    assert recipe["ComponentDependencies"] == {AGENT: {"VersionRequirement": ">=0.4.0", "DependencyType": "HARD"}}
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    assert set(lifecycle) == {"Setenv", "Startup", "Shutdown"}
    assert lifecycle["Setenv"]["EDGEFLEET_HANDOFF_MANIFEST_YAML"] == "{configuration:/Manifest}"
    assert lifecycle["Setenv"]["EDGEFLEET_HANDOFF_ROLLBACK_ORDER"] == "{configuration:/RollbackOrder}"
    startup = lifecycle["Startup"]
    assert startup["Timeout"] > VERDICT_WAIT_SECONDS
    assert "{edgefleet.dev.Agent:work:path}/_greengrass/models/detector" in startup["Script"]
    assert manifest.description not in startup["Script"] and "{configuration:" not in startup["Script"]


def test_agent_recipe_serves_every_model_on_one_endpoint_and_depends_on_no_model():
    recipe = agent_recipe(
        AGENT,
        "0.4.0",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-dev/agent:0.4.0",
        "Edgefleet/Agent",
        "-----BEGIN PUBLIC KEY-----\nMFk...\n-----END PUBLIC KEY-----\n",
    )
    assert gdk_errors(recipe) == []
    assert set(recipe["ComponentDependencies"]) == {"aws.greengrass.DockerApplicationManager", "aws.greengrass.TokenExchangeService"}
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    script = lifecycle["Run"]["Script"]
    assert "BEGIN PUBLIC KEY" not in script and "--name edgefleet-agent " in script
    assert "--network=host" in script and "--host 127.0.0.1 --port 8000" in script
    assert "--model" not in script and "-v {work:path}:/state" in script
    assert "Install" not in lifecycle, "nothing about a model happens in the agent's own lifecycle"


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
    recipe = copy.deepcopy(_model_recipe(manifest, text))
    break_it(recipe)
    errors = gdk_errors(recipe)
    assert errors and any(where in e for e in errors), errors


def test_validation_is_case_insensitive_like_gdk():
    manifest, text = _manifest()
    recipe = _model_recipe(manifest, text)
    shouted = {k.upper(): v for k, v in recipe.items()}
    assert gdk_errors(shouted) == []
    assert Path(SCHEMA).is_file()


def test_a_recipe_the_schema_rejects_is_refused_before_it_is_declared():
    manifest, text = _manifest()
    recipe = _model_recipe(manifest, text, uri="s3://b/models/detector/x.onnx")
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
