"""Greengrass component recipes: one model component version per model version, and the stack's one agent component.

The model component carries the artifact (its S3 URI, content-addressed) and, as configuration, the exact
signed manifest bytes and their signature. Greengrass computes each artifact's digest itself when the
component version is created and the nucleus checks it on download: that proves integrity in transit, not
who published the model. So the agent verifies the manifest's signature against the stack's key (and the
artifact against the manifest) before it serves anything. Rollback orders arrive the same way: a rollback
deployment merges `RollbackOrder`/`RollbackSignature` into the model component's configuration.

One endpoint per device: the agent component (one per stack, long-lived) runs one container that serves every model
of the device on 127.0.0.1:8000 (host network). It depends on no model, so a new model version never restarts it.
Each model component's Startup hands its desired state to the agent through the agent component's work directory
(`{<agent>:work:path}/_greengrass/models/<model>/`, layout in edgefleet_agent/contract/greengrass.py) and waits for the
agent's verdict on it: installed and verified, exit 0; refused, the reason on stderr and exit 3, so the deployment
fails on that device (the gate counts it) and Greengrass rolls back to the previous deployment, whose model
component hands the previous desired state over again. Why a directory and not IPC: the model component's lifecycle is
a shell on the host with no IPC client, and a shared directory needs nothing but the work directory the container
already mounts. The agent's container does get the nucleus's IPC socket and SVCUID, for one thing only: deferring a
forward deployment while the device's maintenance window is closed or an application holds a swap back
(DeferComponentUpdate; docs/aws.md, "Maintenance windows").

The model component's dependency on the agent is HARD: the nucleus starts a component only once its HARD
dependencies are RUNNING, while a SOFT dependency is ready in any state (GreengrassService.dependencyReady), so with
SOFT the hand-off could run before the agent's work directory was set up for it. HARD restarts the *model* component
when the agent changes state (its Startup hands the same state over again); nothing restarts the agent. Its version
requirement is `>=` the stack's agent version, so models published under different agent versions resolve to one
agent version (the newest required) instead of conflicting, and ring deployments need not name the agent.
Recipes are plain dicts so tests can validate them against the GDK schema exactly as `gdk` does.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from components.aws.plan import GG_ARCH
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.greengrass import (
    AGENT_CONFIGURATION,
    ARTIFACTS_DIR,
    CURRENT,
    DESIRED_FILES,
    DESIRED_PREFIX,
    ENV_NAMESPACE,
    ENV_TRUSTED_KEY,
    HANDOFF_DIR,
    HANDOFF_MODELS,
    SERIAL,
    STOPPED,
    VERDICT,
    VERDICT_INSTALLED,
    VERDICT_REFUSED,
    WINDOWS_KEY,
)
from edgefleet_agent.contract.iotedge import ENDPOINT_PORT
from edgefleet_agent.contract.manifest import REFERENCE_KIND, HardwareProfile, ModelManifest
from edgefleet_agent.variants import Build, DeviceFacts, NoVariantFits, builds, choose

RECIPE_FORMAT = "2020-01-25"
PUBLISHER = "edgefleet"
DOCKER_MANAGER = "aws.greengrass.DockerApplicationManager"
TOKEN_EXCHANGE = "aws.greengrass.TokenExchangeService"
NUCLEUS_V2 = ">=2.0.0 <3.0.0"

AGENT_CONTAINER = "edgefleet-agent"
AGENT_HOST = "127.0.0.1"  # host network: the device's own applications (and containers on the host network) only
AGENT_PORT = ENDPOINT_PORT
STARTUP_TIMEOUT_SECONDS = 900  # copy the artifact, then the agent verifies, loads and warms the model up
VERDICT_WAIT_SECONDS = 840  # the Startup script gives up (exit 4) before the nucleus kills it, saying why
EXIT_REFUSED, EXIT_NO_VERDICT = 3, 4
# the custom platform attribute a core device declares its hardware profile by (the nucleus's `platformOverride`,
# docs/aws.md#variants): a version with variants has a recipe manifest per profile carrying only that profile's build
HARDWARE_ATTRIBUTE = "edgefleet.hardware"
# model component's Setenv: name -> its configuration key (DESIRED_FILES' values); the script writes each to a file
DESIRED_ENV = {"EDGEFLEET_HANDOFF_" + name.upper().replace(".", "_").replace("-", "_"): key for name, key in DESIRED_FILES.items()}


def handoff_dir(agent_component: str, model: str) -> str:
    """Where a model component hands its desired state over (host side; the agent sees it under /state)."""
    return f"{{{agent_component}:work:path}}/{HANDOFF_DIR}/{HANDOFF_MODELS}/{model}"


def startup_script(agent_component: str, manifest: ModelManifest, chosen: list[Build] | None = None) -> str:
    """POSIX sh (no Python on the host): copy the artifact, commit the desired state, wait for the agent's verdict.

    Values come from the environment (Setenv), never spliced into the script, so a manifest's quotes or newlines
    cannot break it; only the work path, the model name and the sha256 (both restricted to safe characters) are.
    """
    env = dict(zip(DESIRED_FILES, DESIRED_ENV, strict=True))
    writes = [f'printf \'%s\' "${var}" > "$d/{name}"' for name, var in env.items()]
    copies = []
    for build in chosen if chosen is not None else [None]:
        if build is None or build.kind == REFERENCE_KIND:  # content-addressed: copied once
            artifact = f"{manifest.sha256}.onnx"
            copies += [
                f'a="$m/{ARTIFACTS_DIR}/{artifact}"',
                f'if [ ! -f "$a" ]; then cp "{{artifacts:path}}/{artifact}" "$a.tmp.$$"; mv -f "$a.tmp.$$" "$a"; fi',
            ]
        else:  # where the agent looks for a variant (beside the reference, by its file name): this version's, every time
            copies += [
                f'a="$m/{ARTIFACTS_DIR}/{build.file}"',
                f'cp "{{artifacts:path}}/{build.sha256}.onnx" "$a.tmp.$$"; mv -f "$a.tmp.$$" "$a"',
            ]
    lines = [
        "set -eu",
        f'm="{handoff_dir(agent_component, manifest.name)}"',
        f'mkdir -p "$m/{ARTIFACTS_DIR}"',
        *copies,
        'serial="$(date +%s)-$$"',
        f'd="$m/{DESIRED_PREFIX}$serial"',
        'rm -rf "$d"',
        'mkdir "$d"',
        *writes,
        f'printf \'%s\\n\' "$serial" > "$d/{SERIAL}"',
        f'printf \'%s\\n\' "{DESIRED_PREFIX}$serial" > "$m/.{CURRENT}.tmp.$$"',
        f'mv -f "$m/.{CURRENT}.tmp.$$" "$m/{CURRENT}"',
        f'rm -f "$m/{STOPPED}"',
        f'for old in "$m"/{DESIRED_PREFIX}*; do if [ "$old" != "$d" ]; then rm -rf "$old"; fi; done',
        f"deadline=$(( $(date +%s) + {VERDICT_WAIT_SECONDS} ))",
        "while :; do",
        f'  v="$m/{VERDICT}"',
        '  if [ -f "$v" ] && [ "$(sed -n \'s/^serial=//p\' "$v")" = "$serial" ]; then',
        '    status="$(sed -n \'s/^status=//p\' "$v")"',
        f'    if [ "$status" = "{VERDICT_INSTALLED}" ]; then',
        f'      echo "edgefleet: {manifest.name} $(sed -n \'s/^version=//p\' "$v") installed and verified by the agent"',
        "      exit 0",
        "    fi",
        f'    if [ "$status" = "{VERDICT_REFUSED}" ]; then',
        f'      echo "edgefleet: the agent refused {manifest.name} $(sed -n \'s/^version=//p\' "$v"): $(sed -n \'s/^reason=//p\' "$v"); '
        f'it keeps serving $(sed -n \'s/^serving=//p\' "$v")" >&2',
        f"      exit {EXIT_REFUSED}",
        "    fi",
        "  fi",
        '  if [ "$(date +%s)" -ge "$deadline" ]; then',
        f'    echo "edgefleet: no verdict on {manifest.name} {manifest.version} from the agent within {VERDICT_WAIT_SECONDS} s '
        f'(is {agent_component} running? see its log)" >&2',
        f"    exit {EXIT_NO_VERDICT}",
        "  fi",
        "  sleep 1",
        "done",
    ]
    return "\n".join(lines) + "\n"


def shutdown_script(agent_component: str, model: str) -> str:
    """Marks the model component stopped: Startup (after an update or a restart) removes the marker within seconds;
    a component removed from the device never does, and the agent unloads its model after a grace period."""
    return f'm="{handoff_dir(agent_component, model)}"; if [ -d "$m" ]; then : > "$m/{STOPPED}"; fi\n'


def _artifact(uri: str) -> dict[str, Any]:
    return {"URI": uri, "Unarchive": "NONE", "Permission": {"Read": "OWNER", "Execute": "NONE"}}


def variant_manifests(
    agent_component: str,
    manifest: ModelManifest,
    lifecycle: Callable[[list[Build]], dict[str, Any]],
    uris: Mapping[str, str],
    hardware: Sequence[HardwareProfile],
) -> list[dict[str, Any]]:
    """The recipe's manifests for a version with variants, most specific first (the nucleus takes the first whose
    platform the device matches). First one per hardware profile of the stack's AWS groups, keyed on the device's
    HARDWARE_ATTRIBUTE (set by the nucleus's `platformOverride`) and its architecture, carrying only the build the
    device chooses on that hardware (edgefleet_agent/variants.py `choose`, the agent's own choice, so both agree);
    then one per architecture for a device that declares no profile, carrying every build that architecture can run,
    from which the agent chooses. A profile that fits no build gets no manifest of its own."""
    out: list[dict[str, Any]] = []
    for hw in sorted(hardware, key=lambda h: h.name):
        try:
            build = choose(manifest, DeviceFacts(hw.name, hw.arch, tuple(hw.execution_providers), hw.memory_mb))
        except NoVariantFits:
            continue
        arch = GG_ARCH[hw.arch]
        out.append(
            {
                "Name": f"linux-{arch}-{hw.name}-{build.kind}",
                "Platform": {"os": "linux", "architecture": arch, HARDWARE_ATTRIBUTE: hw.name},
                "Lifecycle": lifecycle([build]),
                "Artifacts": [_artifact(uris[build.kind])],
            }
        )
    for arch in sorted({GG_ARCH[t.arch] for t in manifest.targets}):
        runnable = [b for b in builds(manifest) if any(GG_ARCH[a] == arch for a in b.requires.arch)]
        out.append(
            {
                "Name": f"linux-{arch}",
                "Platform": {"os": "linux", "architecture": arch},
                "Lifecycle": lifecycle(runnable),
                "Artifacts": [_artifact(uris[b.kind]) for b in runnable],
            }
        )
    return out


def model_recipe(
    component: str,
    manifest: ModelManifest,
    manifest_text: str,
    signature: str,
    artifact_uri: str,
    agent_component: str,
    agent_version: str,
    variant_uris: Mapping[str, str] | None = None,
    hardware: Sequence[HardwareProfile] = (),
) -> dict[str, Any]:
    """The model's artifact and configuration, and the lifecycle that hands them to the device's agent.

    One manifest per architecture the model targets, so a deployment to hardware the model was not built
    for fails on the device instead of running it. A version with variants (`variant_uris`: kind -> its S3 URI) gets
    a manifest per hardware profile of the stack's AWS groups with only the build that hardware gets first
    (variant_manifests), so the nucleus downloads one build, not all.
    """
    arches = sorted({GG_ARCH[t.arch] for t in manifest.targets})
    artifact = _artifact(artifact_uri)

    def lifecycle(chosen: list[Build] | None = None) -> dict[str, Any]:
        return {
            "Setenv": {var: f"{{configuration:/{key}}}" for var, key in DESIRED_ENV.items()},
            "Startup": {
                "Script": startup_script(agent_component, manifest, chosen),
                "Timeout": STARTUP_TIMEOUT_SECONDS,
                "RequiresPrivilege": False,
            },
            "Shutdown": {"Script": shutdown_script(agent_component, manifest.name), "RequiresPrivilege": False},
        }

    if manifest.variants:
        missing = [v.kind for v in manifest.variants if v.kind not in (variant_uris or {})]
        if missing:
            raise EdgefleetError(
                f"Greengrass recipe {component}",
                f"{manifest.name} {manifest.version} has variants {', '.join(missing)} with no published artifact URI",
                "this is an edgefleet bug: publish every variant beside the reference before building the recipe",
            )
        manifests = variant_manifests(
            agent_component, manifest, lifecycle, {REFERENCE_KIND: artifact_uri, **(variant_uris or {})}, hardware
        )
    else:
        manifests = [
            {"Name": f"linux-{arch}", "Platform": {"os": "linux", "architecture": arch}, "Lifecycle": lifecycle(), "Artifacts": [artifact]}
            for arch in arches
        ]
    return {
        "RecipeFormatVersion": RECIPE_FORMAT,
        "ComponentName": component,
        "ComponentVersion": manifest.version,
        "ComponentDescription": f"{manifest.name} {manifest.version} (sha256 {manifest.sha256[:12]}): {manifest.description}"[:1024],
        "ComponentPublisher": PUBLISHER,
        "ComponentDependencies": {
            # HARD: started once the agent is RUNNING; restarts this component (never the agent) when the agent does
            agent_component: {"VersionRequirement": f">={agent_version}", "DependencyType": "HARD"},
        },
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
                WINDOWS_KEY: "",  # a ring deployment of a group with maintenance windows merges them (plan.components_spec)
            }
        },
        "Manifests": manifests,
    }


TRUSTED_KEY_ENV = ENV_TRUSTED_KEY
# Greengrass IPC inside the agent's container (the nucleus sets both in the component's environment): the socket is
# mounted at the same path and SVCUID authenticates the component, so the agent can subscribe to component updates and
# defer a deployment (SubscribeToComponentUpdates and DeferComponentUpdate need no accessControl policy)
IPC_SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
IPC_ENV = ("SVCUID", IPC_SOCKET_ENV)


def agent_recipe(
    component: str,
    version: str,
    image: str,
    metric_namespace: str,
    trusted_key_pem: str,
    report_seconds: int = 60,
) -> dict[str, Any]:
    """The device's one agent: pulls `image` from ECR and runs `python3 -m agent --transport greengrass` in it, serving
    every model the model components hand over on one endpoint, 127.0.0.1:8000 on the host network.

    It depends on no model component: deploying a model never restarts it. The trusted key and the metric namespace
    are its own configuration (Setenv, never spliced into the shell command); the key is written to a file the
    agent's `--public-key` reads. AWS credentials come from the token exchange service (the device role) for the
    agent's CloudWatch metrics.
    """
    env = {
        ENV_NAMESPACE: "{configuration:/" + AGENT_CONFIGURATION[ENV_NAMESPACE] + "}",
        TRUSTED_KEY_ENV: "{configuration:/" + AGENT_CONFIGURATION[ENV_TRUSTED_KEY] + "}",
    }
    passthrough = ["AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_REGION", ENV_NAMESPACE, *IPC_ENV]
    run = " ".join(
        [
            f"printf '%s\\n' \"${TRUSTED_KEY_ENV}\" > {{work:path}}/trusted.pem &&",
            f"(docker rm -f {AGENT_CONTAINER} >/dev/null 2>&1 || true) &&",
            "exec docker run --rm --network=host",
            f"--name {AGENT_CONTAINER}",
            *(f"-e {var}" for var in passthrough),
            "-v {work:path}:/state",
            f'-v "${IPC_SOCKET_ENV}:${IPC_SOCKET_ENV}"',
            image,
            "python3 -m agent --transport greengrass --device-id {iot:thingName}",
            "--state-dir /state --public-key /state/trusted.pem",
            f"--host {AGENT_HOST} --port {AGENT_PORT}",
            "--report-seconds {configuration:/ReportSeconds}",
        ]
    )
    return {
        "RecipeFormatVersion": RECIPE_FORMAT,
        "ComponentName": component,
        "ComponentVersion": version,
        "ComponentDescription": f"edgefleet device agent {version}: every model of the device on http://{AGENT_HOST}:{AGENT_PORT}",
        "ComponentPublisher": PUBLISHER,
        "ComponentDependencies": {
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
                    "Run": {"Script": run, "RequiresPrivilege": False},
                    "Shutdown": {"Script": f"docker stop {AGENT_CONTAINER} || true", "RequiresPrivilege": False},
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
