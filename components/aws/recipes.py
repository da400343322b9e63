"""Greengrass component recipes: one model component version per model version, and the agent component.

The model component carries the artifact (its S3 URI, content-addressed) and, as configuration, the exact
signed manifest bytes and their signature. Greengrass computes each artifact's digest itself when the
component version is created and the nucleus checks it on download: that proves integrity in transit, not
who published the model. So the agent verifies the manifest's signature against the stack's key (and the
artifact against the manifest) before it serves anything. Rollback orders arrive the same way: a rollback
deployment merges `RollbackOrder`/`RollbackSignature` into the model component's configuration.

The agent runs from the stack's ECR image (`python3 -m agent …` inside it), reads the model component's
configuration through recipe variables set into its environment, and mounts the model's artifacts read-only.
Recipes are plain dicts so tests can validate them against the GDK schema exactly as `gdk` does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from components.aws.plan import GG_ARCH
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.greengrass import AGENT_CONFIGURATION, ENV_NAMESPACE, ENV_TRUSTED_KEY, MODEL_CONFIGURATION
from edgefleet_agent.contract.manifest import ModelManifest

RECIPE_FORMAT = "2020-01-25"
PUBLISHER = "edgefleet"
DOCKER_MANAGER = "aws.greengrass.DockerApplicationManager"
TOKEN_EXCHANGE = "aws.greengrass.TokenExchangeService"
NUCLEUS_V2 = ">=2.0.0 <3.0.0"


def model_recipe(component: str, manifest: ModelManifest, manifest_text: str, signature: str, artifact_uri: str) -> dict[str, Any]:
    """A component with no process: Greengrass downloads the artifact; the agent that depends on it serves it.

    One manifest per architecture the model targets, so a deployment to hardware the model was not built
    for fails on the device instead of running it.
    """
    arches = sorted({GG_ARCH[t.arch] for t in manifest.targets})
    artifact = {"URI": artifact_uri, "Unarchive": "NONE", "Permission": {"Read": "OWNER", "Execute": "NONE"}}
    return {
        "RecipeFormatVersion": RECIPE_FORMAT,
        "ComponentName": component,
        "ComponentVersion": manifest.version,
        "ComponentDescription": f"{manifest.name} {manifest.version} (sha256 {manifest.sha256[:12]}): {manifest.description}"[:1024],
        "ComponentPublisher": PUBLISHER,
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "Model": manifest.name,
                "Version": manifest.version,
                "Sha256": manifest.sha256,
                "Size": manifest.size,
                "File": f"{manifest.sha256}.onnx",
                "Manifest": manifest_text,
                "Signature": signature,
                "RollbackOrder": "",
                "RollbackSignature": "",
                "Rollout": "",
                "Ring": "",
                "RolloutId": "",
            }
        },
        "Manifests": [
            {"Name": f"linux-{arch}", "Platform": {"os": "linux", "architecture": arch}, "Lifecycle": {}, "Artifacts": [artifact]}
            for arch in arches
        ],
    }


# name in the container <- recipe variable (interpolated by the nucleus at deployment time)
AGENT_ENV = {
    **{env: f"{{model}}:configuration:/{key}" for env, key in MODEL_CONFIGURATION.items()},
    ENV_NAMESPACE: f"configuration:/{AGENT_CONFIGURATION[ENV_NAMESPACE]}",
}
TRUSTED_KEY_ENV = ENV_TRUSTED_KEY


INSTALL_TIMEOUT_SECONDS = 600  # download + verify + load of a large model on a slow device


def agent_recipe(
    component: str,
    version: str,
    model_name: str,
    model_component: str,
    image: str,
    metric_namespace: str,
    trusted_key_pem: str,
    report_seconds: int = 60,
) -> dict[str, Any]:
    """The device agent for one model: pulls `image` from ECR and runs `python3 -m agent` in it.

    Values reach the container as environment variables set through Setenv, never spliced into the shell
    command, so a manifest's quotes or newlines cannot break it; the trusted key is written to a file the
    agent's `--public-key` reads. AWS credentials come from the token exchange service (the device role)
    for the agent's CloudWatch metrics. If the agent refuses a model (bad signature, digest, or a downgrade
    without a valid rollback order) it exits non-zero while keeping its last good model: the component breaks,
    the deployment fails on that device and Greengrass (failureHandlingPolicy ROLLBACK) restores the previous
    deployment, which is what the gate counts as a failed device.
    """
    env = {name: "{" + var.format(model=model_component) + "}" for name, var in AGENT_ENV.items()}
    env[TRUSTED_KEY_ENV] = "{configuration:/" + AGENT_CONFIGURATION[ENV_TRUSTED_KEY] + "}"
    passthrough = ["AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_REGION", *AGENT_ENV]
    container = f"edgefleet-{model_name}"

    def agent(name: str, *flags: str) -> str:
        return " ".join(
            [
                f"printf '%s\\n' \"${TRUSTED_KEY_ENV}\" > {{work:path}}/trusted.pem &&",
                "exec docker run --rm --network=host",
                f"--name {name}",
                *(f"-e {var}" for var in passthrough),
                f"-v {{{model_component}:artifacts:path}}:/models:ro",
                "-v {work:path}:/state",
                image,
                f"python3 -m agent --transport greengrass --device-id {{iot:thingName}} --model {model_name} --model-dir /models",
                "--state-dir /state --public-key /state/trusted.pem",
                *flags,
            ]
        )

    # Install verifies and installs the model before the component counts as running: a refused model fails
    # the install (exit 3), so the deployment fails on this device and the gate counts it, instead of the
    # deployment succeeding while Run is still about to refuse.
    install = agent(f"{container}-install", "--install-only")
    run = agent(container, "--report-seconds {configuration:/ReportSeconds}")
    return {
        "RecipeFormatVersion": RECIPE_FORMAT,
        "ComponentName": component,
        "ComponentVersion": version,
        "ComponentDescription": f"edgefleet device agent {version} serving model {model_name}",
        "ComponentPublisher": PUBLISHER,
        "ComponentDependencies": {
            # HARD: the agent restarts when the model component changes version or configuration
            model_component: {"VersionRequirement": ">=0.0.0", "DependencyType": "HARD"},
            DOCKER_MANAGER: {"VersionRequirement": NUCLEUS_V2, "DependencyType": "HARD"},
            TOKEN_EXCHANGE: {"VersionRequirement": NUCLEUS_V2, "DependencyType": "HARD"},
        },
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "MetricNamespace": metric_namespace,
                "ReportSeconds": report_seconds,
                "TrustedKeyPem": trusted_key_pem,
            }
        },
        "Manifests": [
            {
                "Name": "linux",
                "Platform": {"os": "linux"},
                "Lifecycle": {
                    "Setenv": env,
                    "Install": {"Script": install, "Timeout": INSTALL_TIMEOUT_SECONDS, "RequiresPrivilege": False},
                    "Run": {"Script": run, "RequiresPrivilege": False},
                    "Shutdown": {"Script": f"docker stop {container} || true", "RequiresPrivilege": False},
                },
                "Artifacts": [{"URI": f"docker:{image}"}],
            }
        ],
    }


SCHEMA = Path(__file__).parent / "schemas" / "recipe_schema.json"


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))


def gdk_lower(value: Any) -> Any:
    """GDK lower-cases every key of the recipe, recursively, lists included, before it validates."""
    if isinstance(value, dict):
        return {str(k).lower(): gdk_lower(v) for k, v in value.items()}
    if isinstance(value, list):
        return [gdk_lower(v) for v in value]
    return value


def recipe_errors(recipe: dict[str, Any]) -> list[str]:
    """What the Greengrass Development Kit's schema says of a recipe, the way `gdk component build` checks it."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(recipe)'}: {e.message}" for e in _validator().iter_errors(gdk_lower(recipe))]


def recipe_text(recipe: dict[str, Any]) -> str:
    """The inline recipe as Greengrass receives it (JSON; key order kept so a diff reads like the recipe).
    Refuses a recipe the GDK schema rejects: CreateComponentVersion would, after earlier resources were made."""
    errors = recipe_errors(recipe)
    if errors:
        raise EdgefleetError(
            f"Greengrass recipe {recipe.get('ComponentName', '?')}",
            f"does not validate against the GDK recipe schema ({SCHEMA.name}): " + "; ".join(errors[:5]),
            "this is an edgefleet bug or a value the schema forbids; check the component name, version and configuration in the stack file",
        )
    return json.dumps(recipe, indent=2) + "\n"
