"""IoT Edge deployment manifests for a fleet: one base deployment per device group, one layer per ring.

Why two kinds. IoT Hub merges layered deployments on top of the highest-priority standard deployment that
targets a device, and layered deployments may not configure the runtime (`$edgeAgent` / `$edgeHub` system
modules). So each device group gets a *base* deployment (the full manifest: runtime, system modules, the agent
module, routes and the agent's trust settings) and each ring a *layer* one priority above it that pins the agent
module and sets one model under `properties.desired.models.<model>` of the agent module twin. Layers of
different models touch different paths, so several rollouts can run on one group at once. What a device in a
ring runs is the base with its ring's layers merged in; `effective_manifest` computes it, and that is what must
validate against the vendor schemas for the schemaVersion the base declares.

Rings are disjoint, as the engine assumes: ring i targets its selection and *not* any earlier ring's selection.
Twin tags a device lacks are undefined in IoT Hub's query language, and NOT of undefined is undefined, so each
negated tag test is guarded with IS_DEFINED.

Pure data: no Pulumi, no network. The platform feeds it Outputs through `apply`, the gate's hub calls it to
build rollback layers, tests validate what it returns.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgefleet_agent.contract.iotedge import (
    AGENT_FORMAT,
    CAP_KEY,
    CHUNK_KEY_RE,
    CHUNKED_FIELDS,
    ENDPOINT_HOST_ENV,
    ENDPOINT_PORT,
    ENDPOINT_PORT_ENV,
    MAX_CHUNKS,
    MODULE_LISTEN_HOST,
    TWIN_STRING_LIMIT,
    agent_desired,
    chunk_keys,
    desired_from_agent,
    model_key,
)
from edgefleet_agent.contract.state import DesiredModel

AGENT_MODULE = "edgefleet-agent"
AGENT_REPOSITORY = "edgefleet-agent"
ROUTE = "edgefleetAgentToUpstream"
RING_LABEL = "edgefleet-ring"
BASE_LABEL = "edgefleet-base"
SYSTEM_IMAGES = {"edgeAgent": "mcr.microsoft.com/azureiotedge-agent", "edgeHub": "mcr.microsoft.com/azureiotedge-hub"}
CREATE_OPTIONS_CHUNK = 512  # IoT Edge splits longer createOptions into createOptions01..07
CREATE_OPTIONS_CHUNKS = 8
TWIN_DESIRED_LIMIT = 32 * 1024  # IoT Hub: desired properties of one twin, in bytes
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # not counted in a twin's size
SCHEMA_FILES = {"$edgeAgent": "azure-iot-edgeagent-deployment-{}.json", "$edgeHub": "azure-iot-edgehub-deployment-{}.json"}
TAG_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
BAD_VALUE_RE = re.compile(r"['\\\x00-\x1f]")

DEFAULT_CREATE_OPTIONS: dict[str, Any] = {
    "ExposedPorts": {f"{ENDPOINT_PORT}/tcp": {}},  # to the IoT Edge network only: no PortBindings, no host port
    "HostConfig": {
        "Binds": ["edgefleet-models:/var/lib/edgefleet"],  # models survive container restarts and image updates
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    },
}


# -- modules ---------------------------------------------------------------------------------------------------
def settings(image: str, create_options: dict[str, Any] | None) -> dict[str, Any]:
    """Module settings; createOptions is JSON text, split into 512-character chunks the way IoT Edge reads them."""
    out: dict[str, Any] = {"image": image}
    if create_options is None:
        return out
    text = json.dumps(create_options, separators=(",", ":"), sort_keys=True)
    chunks = [text[i : i + CREATE_OPTIONS_CHUNK] for i in range(0, len(text), CREATE_OPTIONS_CHUNK)] or ["{}"]
    if len(chunks) > CREATE_OPTIONS_CHUNKS:
        raise ValueError(
            f"createOptions for {image} is {len(text)} characters; IoT Edge takes at most {CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_CHUNKS}"
        )
    out["createOptions"] = chunks[0]
    for i, chunk in enumerate(chunks[1:], start=1):
        out[f"createOptions{i:02d}"] = chunk
    return out


@dataclass(frozen=True)
class AgentModule:
    """The edgefleet agent as an IoT Edge module: image from the stack's registry, pinned to the agent version."""

    image: str
    agent_version: str
    restart_policy: str = "always"
    create_options: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_CREATE_OPTIONS))
    env: dict[str, str] = field(default_factory=dict)

    def spec(self, agent_schema: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.agent_version,
            "type": "docker",
            "status": "running",
            "restartPolicy": self.restart_policy,
            "settings": settings(self.image, self.create_options),
            "env": {
                "EDGEFLEET_PLATFORM": {"value": "azure"},
                "EDGEFLEET_AGENT_VERSION": {"value": self.agent_version},
                ENDPOINT_HOST_ENV: {"value": MODULE_LISTEN_HOST},
                ENDPOINT_PORT_ENV: {"value": str(ENDPOINT_PORT)},
                **{k: {"value": v} for k, v in sorted(self.env.items())},
            },
        }
        if agent_schema != "1.0":  # 1.0 has no startupOrder: the agent then starts in any order
            out["startupOrder"] = 10
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AgentModule":
        return cls(**data)


def system_modules(runtime: str, agent_schema: str) -> dict[str, Any]:
    hub: dict[str, Any] = {
        "type": "docker",
        "status": "running",
        "restartPolicy": "always",
        "settings": settings(f"{SYSTEM_IMAGES['edgeHub']}:{runtime}", None),
    }
    if agent_schema != "1.0":
        hub["startupOrder"] = 0  # edgeHub first: the agent talks to IoT Hub through it
    return {
        "edgeAgent": {"type": "docker", "settings": settings(f"{SYSTEM_IMAGES['edgeAgent']}:{runtime}", None)},
        "edgeHub": hub,
    }


def route() -> str:
    return f"FROM /messages/modules/{AGENT_MODULE}/outputs/* INTO $upstream"


# -- the agent's desired properties ----------------------------------------------------------------------------
def base_manifest(
    *,
    agent: AgentModule,
    runtime: str,
    agent_schema: str,
    hub_schema: str,
    trust: dict[str, str],
    store_sas: str | None = None,
    registry: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The group's standard deployment: runtime, system modules, the agent module, routes, trust. No model."""
    runtime_settings: dict[str, Any] = {"minDockerVersion": "v1.25"}
    if registry:
        runtime_settings["registryCredentials"] = {"edgefleet": dict(registry)}
    desired: dict[str, Any] = {"schemaVersion": AGENT_FORMAT, "trust": dict(trust), "models": {}}
    if store_sas:
        desired["store"] = {"sasToken": store_sas}
    hub: dict[str, Any] = {
        "schemaVersion": hub_schema,
        "routes": {ROUTE: route()},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
    }
    return {
        "$edgeAgent": {
            "properties.desired": {
                "schemaVersion": agent_schema,
                "runtime": {"type": "docker", "settings": runtime_settings},
                "systemModules": system_modules(runtime, agent_schema),
                "modules": {AGENT_MODULE: agent.spec(agent_schema)},
            }
        },
        "$edgeHub": {"properties.desired": hub},
        AGENT_MODULE: {"properties.desired": desired},
    }


def ring_layer(*, agent: AgentModule, agent_schema: str, desired: DesiredModel, ring_key: str) -> dict[str, Any]:
    """A ring's layered deployment: the agent module pinned, its route, and one model in its twin."""
    return {
        "$edgeAgent": {f"properties.desired.modules.{AGENT_MODULE}": agent.spec(agent_schema)},
        "$edgeHub": {f"properties.desired.routes.{ROUTE}": route()},
        AGENT_MODULE: {f"properties.desired.models.{model_key(desired.model)}": agent_desired(desired, ring_key)},
    }


def effective_manifest(base: dict[str, Any], *layers: dict[str, Any]) -> dict[str, Any]:
    """What IoT Hub puts in the module twins of a device with `base` and `layers` (ascending priority) applied."""
    out = copy.deepcopy(base)
    for layer in layers:
        for module, parts in layer.items():
            twin = out.setdefault(module, {"properties.desired": {}})
            for path, value in parts.items():
                if path == "properties.desired":
                    twin["properties.desired"] = copy.deepcopy(value)
                    continue
                if not path.startswith("properties.desired."):
                    raise ValueError(f"{module}: {path!r} is neither properties.desired nor a path below it")
                node = twin.setdefault("properties.desired", {})
                *parents, leaf = path.removeprefix("properties.desired.").split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = copy.deepcopy(value)
    return out


# -- what the agent's twin must hold (our contract, Draft 7) -----------------------------------------------------
AGENT_DESIRED_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "edgefleet agent module twin: desired properties",
    "type": "object",
    "required": ["schemaVersion", "trust", "models"],
    "additionalProperties": False,
    "properties": {
        "schemaVersion": {"const": AGENT_FORMAT},
        "trust": {
            "type": "object",
            "required": ["keyId", "publicKeyPem"],
            "additionalProperties": False,
            "properties": {
                "keyId": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                "publicKeyPem": {"type": "string", "pattern": "^-----BEGIN PUBLIC KEY-----\n"},
            },
        },
        "store": {
            "type": "object",
            "required": ["sasToken"],
            "additionalProperties": False,
            "properties": {"sasToken": {"type": "string", "minLength": 1}},
        },
        "models": {
            "type": "object",
            "propertyNames": {"pattern": "^[a-z_][a-z0-9_]{0,62}$"},
            "additionalProperties": {"$ref": "#/definitions/model"},
        },
    },
    "definitions": {
        "model": {
            "type": "object",
            "required": [
                "model",
                "version",
                "sha256",
                "size",
                "uri",
                "manifest",
                "manifestChunks",
                "signature",
                "signatureChunks",
                "rollout",
                "ring",
            ],
            "additionalProperties": False,
            "patternProperties": {CHUNK_KEY_RE.pattern: {"type": "string", "minLength": 1}},
            "properties": {
                "model": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
                "version": {"type": "string", "minLength": 5},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "size": {"type": "integer", "minimum": 1},
                "uri": {"type": "string", "pattern": "^https://"},
                "manifest": {"type": "string", "minLength": 1},
                "signature": {"type": "string", "minLength": 1},
                "manifestChunks": {"type": "integer", "minimum": 1, "maximum": MAX_CHUNKS},
                "signatureChunks": {"type": "integer", "minimum": 1, "maximum": MAX_CHUNKS},
                "rollout": {"type": "string", "minLength": 1},
                "ring": {"type": "string", "minLength": 1},
                "rollbackOrder": {"type": "string", "minLength": 1},
                "rollbackSignature": {"type": "string", "minLength": 1},
                CAP_KEY: {"type": "integer", "minimum": 1},  # the ring's download cap, bytes a second
                "maintenanceWindows": {"type": "string", "minLength": 1},  # the ring's group's windows document
                "variants": {
                    "type": "object",
                    "propertyNames": {"pattern": "^[a-z0-9]{1,16}$"},
                    "additionalProperties": {
                        "type": "object",
                        "required": ["uri", "sha256", "size"],
                        "additionalProperties": False,
                        "properties": {
                            "uri": {"type": "string", "pattern": "^https://"},
                            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                            "size": {"type": "integer", "minimum": 1},
                        },
                    },
                },
            },
            "dependencies": {"rollbackOrder": ["rollbackSignature"], "rollbackSignature": ["rollbackOrder"]},
        }
    },
}


class Problem(str):
    """One thing wrong with a manifest, as text (where, what), with `fix` saying what to do about it."""

    fix: str

    def __new__(cls, text: str, fix: str = "") -> "Problem":
        self = super().__new__(cls, text)
        self.fix = fix
        return self


def json_path(parts: Any) -> str:
    """`$['$edgeAgent']['properties.desired']…`: bracket form, because IoT Edge keys contain dots."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"[{str(p)!r}]" for p in parts)


@functools.lru_cache(maxsize=None)
def vendor_schema(module: str, version: str) -> tuple[str, tuple[Any, ...]] | None:
    """(file name, validators) for the IoT Edge deployment schema of `module` at `version`, shipped in schemas/."""
    from importlib import resources

    import jsonschema

    name = SCHEMA_FILES[module].format(version)
    res = resources.files("components.azure.schemas") / name
    if not res.is_file():
        return None
    schema = json.loads(res.read_text(encoding="utf-8"))
    classes = sorted({jsonschema.validators.validator_for(schema), jsonschema.Draft7Validator}, key=lambda c: c.__name__)
    return name, tuple(cls(schema) for cls in classes)


VENDOR_FIX = (
    "the manifest is generated from the stack's edgefleet:azure settings: set edge_agent_schema / edge_hub_schema to "
    "versions IoT Edge supports together with the runtime (edge_runtime); if they are, this is an edgefleet bug, "
    "report it with the message above"
)


def vendor_problems(modules_content: dict[str, Any]) -> list[Problem]:
    """The `$edgeAgent` and `$edgeHub` parts of a full (non-layered) manifest against the vendor schema of the
    schemaVersion each declares, as `az iot edge deployment create` checks them, under both the draft the schema
    names and Draft 7 (the CLI's). Layers are not validated (the CLI skips them too); their effective manifest is."""
    from jsonschema.exceptions import best_match

    agent = modules_content.get("$edgeAgent", {})
    if "properties.desired" not in agent:
        return []
    out: list[Problem] = []
    for module in SCHEMA_FILES:
        version = str(modules_content.get(module, {}).get("properties.desired", {}).get("schemaVersion", ""))
        found = vendor_schema(module, version) if re.fullmatch(r"\d+\.\d+", version) else None
        if found is None:
            out.append(
                Problem(
                    f"{module} {json_path([module, 'properties.desired', 'schemaVersion'])}: schemaVersion {version!r} has no "
                    f"vendor schema in components/azure/schemas",
                    VENDOR_FIX,
                )
            )
            continue
        name, validators = found
        seen = set()
        for validator in validators:
            for err in validator.iter_errors({module: modules_content.get(module)}):
                err = best_match(err.context) if err.context else err
                where = json_path(err.absolute_path)
                if (where, err.message) in seen:
                    continue
                seen.add((where, err.message))
                out.append(Problem(f"{module} does not validate against {name} at {where}: {err.message}", VENDOR_FIX))
    return out


def _strings(value: Any, parts: list[Any]):
    if isinstance(value, str):
        yield parts, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, [*parts, k])
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, [*parts, i])


def twin_size(value: Any) -> int:
    """A twin section's size as IoT Hub computes it: keys and string values as UTF-8 (control characters not
    counted), numbers 8 bytes, booleans 4, objects the sum of their keys and values; read-only `$` elements excluded."""
    if isinstance(value, dict):
        return sum(len(k.encode("utf-8")) + twin_size(v) for k, v in value.items() if k not in ("$version", "$metadata", "$etag"))
    if isinstance(value, list):
        return sum(twin_size(v) for v in value)
    if isinstance(value, bool):
        return 4
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return len(CONTROL_RE.sub("", value).encode("utf-8"))
    return 0


def _model_entries(twin: dict[str, Any]) -> dict[str, Any]:
    """The agent twin's model entries by key, in a full manifest or a layer (path keys)."""
    out = dict((twin.get("properties.desired") or {}).get("models") or {})
    out.update({k.removeprefix("properties.desired.models."): v for k, v in twin.items() if k.startswith("properties.desired.models.")})
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def _manifest_bytes(entry: dict[str, Any]) -> int:
    return sum(
        len(v.encode("utf-8"))
        for k, v in entry.items()
        if isinstance(v, str) and (k == "manifest" or ((m := CHUNK_KEY_RE.match(k)) is not None and m.group(1) == "manifest"))
    )


def twin_problems(modules_content: dict[str, Any]) -> list[Problem]:
    """IoT Hub's twin limits: every string value at most 4 KB (the agent twin's manifest and signature are chunked
    to fit), a twin's desired properties at most 32 KB."""
    out: list[Problem] = []
    for module, twin in modules_content.items():
        for parts, text in _strings(twin, [module]):
            size = len(text.encode("utf-8"))
            if size > TWIN_STRING_LIMIT:
                out.append(
                    Problem(
                        f"{module} {json_path(parts)}: string value is {size} bytes; IoT Hub twin string values "
                        f"are at most {TWIN_STRING_LIMIT}",
                        f"keep this value under {TWIN_STRING_LIMIT} bytes",
                    )
                )
        desired = {k: v for k, v in twin.items() if k == "properties.desired" or k.startswith("properties.desired.")}
        size = twin_size(desired)
        if size > TWIN_DESIRED_LIMIT:
            manifests = (
                sorted(((_manifest_bytes(e), k) for k, e in _model_entries(twin).items()), reverse=True) if module == AGENT_MODULE else []
            )
            carried = "; it carries " + ", ".join(f"the {n}-byte model.yaml of {k}" for n, k in manifests) if manifests else ""
            out.append(
                Problem(
                    f"{module}: desired properties are {size} bytes; a module twin holds at most {TWIN_DESIRED_LIMIT}{carried}",
                    "deploy fewer models to this group at once, or shorten the largest model.yaml (long descriptions, "
                    "notes, unused metrics or targets); it is signed at deploy time, so nothing else needs re-pinning",
                )
            )
    return out


def chunk_problems(entry: dict[str, Any]) -> list[str]:
    """A model entry's chunk keys against its counts: a missing piece, or one the count does not cover."""
    out = []
    for name in CHUNKED_FIELDS:
        count = entry.get(f"{name}Chunks")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CHUNKS:
            continue  # the schema names it
        want = chunk_keys(name, count)
        out += [f"{k} is missing ({name}Chunks is {count})" for k in want if k not in entry]
        out += [
            f"{k} is beyond {name}Chunks ({count})"
            for k in sorted(entry)
            if k not in want and (m := CHUNK_KEY_RE.match(k)) and m.group(1) == name
        ]
    return out


CONTRACT_FIX = "this is an edgefleet bug or a tampered input; report it with the message above"


def check_manifest(modules_content: dict[str, Any], contract: bool = True) -> list[Problem]:
    """Everything IoT Hub or IoT Edge would refuse, or break on: the vendor schemas (full manifests), createOptions
    as JSON, the twin limits and, with `contract`, the agent twin's properties against our contract. Works on full
    manifests and on layers (path keys)."""
    import jsonschema

    problems: list[Problem] = vendor_problems(modules_content)
    agent = modules_content.get("$edgeAgent", {}).get("properties.desired", {})
    for where, module in [
        *((f"systemModules.{k}", v) for k, v in agent.get("systemModules", {}).items()),
        *((f"modules.{k}", v) for k, v in agent.get("modules", {}).items()),
    ]:
        s = module.get("settings", {})
        parts = [s[k] for k in sorted(s) if re.fullmatch(r"createOptions(\d{2})?", k)]
        if not parts:
            continue
        fix = "createOptions must be Docker's container create options as JSON text (a string, split into 512-character chunks)"
        if not all(isinstance(p, str) for p in parts):
            problems.append(Problem(f"$edgeAgent {where}.settings.createOptions is not a string", fix))
            continue
        try:
            options = json.loads("".join(parts))
        except ValueError as e:
            problems.append(Problem(f"$edgeAgent {where}.settings.createOptions is not JSON ({e})", fix))
            continue
        bound = ((options.get("HostConfig") or {}).get("PortBindings") or {}) if isinstance(options, dict) else {}
        if where == f"modules.{AGENT_MODULE}" and f"{ENDPOINT_PORT}/tcp" in bound:
            problems.append(
                Problem(
                    f"$edgeAgent {where}.settings.createOptions binds the agent's inference port {ENDPOINT_PORT} to a host port: "
                    "the endpoint answers unauthenticated requests and must be reachable only by the device's modules",
                    f"remove HostConfig.PortBindings['{ENDPOINT_PORT}/tcp']; modules call http://{AGENT_MODULE}:{ENDPOINT_PORT}/v2/...",
                )
            )
    problems += twin_problems(modules_content)
    if not contract:
        return problems
    for path, value in modules_content.get(AGENT_MODULE, {}).items():
        if path == "properties.desired":
            schema = AGENT_DESIRED_SCHEMA
        elif path.startswith("properties.desired.models."):
            schema = {**AGENT_DESIRED_SCHEMA["definitions"]["model"], "definitions": AGENT_DESIRED_SCHEMA["definitions"]}
        else:
            problems.append(Problem(f"{AGENT_MODULE} {path}: not part of the agent's twin contract", CONTRACT_FIX))
            continue
        for err in jsonschema.Draft7Validator(schema).iter_errors(value):
            problems.append(Problem(f"{AGENT_MODULE} {path}{''.join(f'.{p}' for p in err.absolute_path)}: {err.message}", CONTRACT_FIX))
    for key, entry in _model_entries(modules_content.get(AGENT_MODULE, {})).items():
        problems += [Problem(f"{AGENT_MODULE} models.{key}: {why}", CONTRACT_FIX) for why in chunk_problems(entry)]
    return problems


# -- targeting ---------------------------------------------------------------------------------------------------
def _tag(key: str, value: str, guarded: bool) -> str:
    test = f"tags.{key}='{value}'"
    return f"(IS_DEFINED(tags.{key}) AND {test})" if guarded else test


def selection(labels: dict[str, str], devices: list[str] | tuple[str, ...] = (), guarded: bool = False) -> str:
    """A group's (or a ring's) devices: any listed id, or all labels matching as twin tags (as membership.in_group)."""
    parts = []
    if devices:
        parts.append("(" + " OR ".join(f"deviceId='{d}'" for d in devices) + ")")
    if labels:
        parts.append("(" + " AND ".join(_tag(k, v, guarded) for k, v in sorted(labels.items())) + ")")
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def group_condition(labels: dict[str, str], devices: list[str] | tuple[str, ...] = ()) -> str:
    return selection(labels, devices)


def ring_selection(group_labels: dict[str, str], group_devices: list[str], ring_labels: dict[str, str], guarded: bool = False) -> str:
    sel = selection(group_labels, group_devices, guarded)
    if ring_labels:
        sel = f"{sel} AND ({' AND '.join(_tag(k, v, guarded) for k, v in sorted(ring_labels.items()))})"
    return sel


def ring_conditions(rings: list[tuple[dict[str, str], list[str], dict[str, str]]]) -> list[str]:
    """(group labels, group devices, ring labels) per ring, in order -> disjoint target conditions."""
    out = []
    for i, (gl, gd, rl) in enumerate(rings):
        cond = ring_selection(gl, gd, rl)
        for pgl, pgd, prl in rings[:i]:
            cond += f" AND NOT ({ring_selection(pgl, pgd, prl, guarded=True)})"
        out.append(cond)
    return out


def label_problems(labels: dict[str, str], key: str) -> list[tuple[str, str, str]]:
    out = []
    for k, v in labels.items():
        if not TAG_KEY_RE.match(k):
            out.append(
                (
                    f"{key}.{k}",
                    f"{k!r} cannot be used as an IoT Hub twin tag in a target condition",
                    "use letters, digits and underscores, starting with a letter",
                )
            )
        if BAD_VALUE_RE.search(v) or len(v) > 128:
            out.append(
                (
                    f"{key}.{k}",
                    f"value {v!r} cannot be quoted in a target condition",
                    "use a value without quotes, backslashes or control characters, at most 128 characters",
                )
            )
    return out


# -- a ring's configuration, for Pulumi and for the gate's rollbacks ----------------------------------------------
@dataclass(frozen=True)
class RingDeploymentSpec:
    """Everything needed to build a ring's layer for any version: the gate rebuilds rollback layers from it."""

    rollout: str
    ring: str
    index: int
    model: str
    target_condition: str
    priority: int
    agent: AgentModule
    agent_schema: str
    # bytes a second the ring's devices download at most: the ring's own max_download_bytes_per_second, else its
    # group's (RingConfig.download_cap); None: no cap. Every layer of the ring carries it (`ring_configuration`).
    download_cap: int | None = None
    # the ring's group's maintenance windows (edgefleet_agent/contract/windows.py `Windows.to_document`), "" for none:
    # every layer of the ring carries them, forward or rollback; the agent swaps forward only inside one, and a
    # rollback whatever the hour
    windows: str = ""

    @property
    def key(self) -> str:
        return f"{self.rollout}.{self.ring}"

    def to_json(self) -> dict[str, Any]:
        body = {**asdict(self), "agent": self.agent.to_json()}
        if not body["windows"]:  # a group without windows: the gate's inputs exactly as before windows existed
            del body["windows"]
        if body["download_cap"] is None:  # unwritten when unset: an uncapped ring's gate inputs are what they were
            del body["download_cap"]
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RingDeploymentSpec":
        cap = data.get("download_cap")
        return cls(
            **{
                **data,
                "agent": AgentModule.from_json(data["agent"]),
                "index": int(data["index"]),
                "priority": int(data["priority"]),
                "download_cap": int(cap) if cap is not None else None,  # Pulumi hands numbers back as floats
            }
        )


def _reported(model: str) -> str:
    return f"properties.reported.models.{model_key(model)}"


def metric_where(spec: RingDeploymentSpec, desired: DesiredModel, what: str) -> str:
    """WHERE clauses over the agent module twins of this ring, for this rollout (the agent echoes ring and rollout)."""
    r = _reported(spec.model)
    where = f"moduleId = '{AGENT_MODULE}' AND {r}.ring = '{spec.key}' AND {r}.rollout = '{desired.rollout}'"
    if what == "adopted":
        where += f" AND {r}.version = '{desired.version}' AND {r}.sha256 = '{desired.sha256}' AND {r}.status = 'ok'"
    elif what == "failed":
        where += f" AND {r}.status = 'failed' AND {r}.failedVersion = '{desired.version}'"
    elif what != "reporting":
        raise ValueError(what)
    return where


def ring_metrics(spec: RingDeploymentSpec, desired: DesiredModel) -> dict[str, str]:
    """Custom metrics: devices reporting the new version healthy, reporting its failure, reporting at all."""
    return {
        name: f"SELECT deviceId FROM devices.modules WHERE {metric_where(spec, desired, name)}"
        for name in ("adopted", "failed", "reporting")
    }


def ring_labels(spec: RingDeploymentSpec, desired: DesiredModel) -> dict[str, str]:
    return {
        RING_LABEL: spec.key,
        "edgefleet-rollout": spec.rollout,
        "edgefleet-model": desired.model,
        "edgefleet-version": desired.version,
        "edgefleet-kind": "rollback" if desired.is_rollback else "ring",
    }


def desired_variants(manifest: Any, reference_uri: str) -> list[dict[str, Any]] | None:
    """The desired state's `variants` for a version: each build's blob, content-addressed beside the reference's
    (`<model>/<sha256>.onnx`, published by providers.publish_artifact; components/props.py published_variants)."""
    from components.props import published_variants

    return published_variants(manifest, reference_uri)


def ring_configuration(spec: RingDeploymentSpec, desired: DesiredModel) -> dict[str, Any]:
    """The Configuration resource's properties (less hub access) for `desired` in this ring: with the group's windows,
    and exactly the ring's download cap (whatever `desired` carried: the layer Pulumi declares and the ones the gate
    writes agree)."""
    if spec.windows and desired.windows != spec.windows:
        desired = replace(desired, windows=spec.windows)
    if desired.max_download_bytes_per_second != spec.download_cap:
        desired = replace(desired, max_download_bytes_per_second=spec.download_cap)
    return {
        "id_prefix": f"ef-{spec.rollout}-{spec.ring}",
        "id_hint": ("rb-" if desired.is_rollback else "") + f"v{desired.version}",
        "content": {"modulesContent": ring_layer(agent=spec.agent, agent_schema=spec.agent_schema, desired=desired, ring_key=spec.key)},
        "target_condition": spec.target_condition,
        "priority": spec.priority,
        "labels": ring_labels(spec, desired),
        "metrics": ring_metrics(spec, desired),
        "exclusive_label": RING_LABEL,
    }


def desired_from_configuration(cfg: dict[str, Any], model: str) -> DesiredModel | None:
    """Reads back the model a ring layer sets (None if the configuration sets none), without the group's windows."""
    twin = ((cfg.get("content") or {}).get("modulesContent") or {}).get(AGENT_MODULE) or {}
    data = twin.get(f"properties.desired.models.{model_key(model)}")
    if not isinstance(data, dict):
        return None
    # the windows are the ring's (ring_configuration adds them), not the engine's desired state, which it compares whole
    return desired_from_agent({k: v for k, v in data.items() if k != "maintenanceWindows"})
