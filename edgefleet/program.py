"""The fleet program: reads the stack's typed config and declares everything. `__main__.py` calls `main`.

Runs the same under `pulumi up` (config from the engine) and under `edgefleet synth` (mocks, config from
the stack file); errors name `stacks/Pulumi.<stack>.yaml` and the key either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.config import CONFIG, get_config_env

from components import registry
from components.app_registry import AppRegistry, AppRegistryArgs
from components.device_group import DeviceGroup, DeviceGroupArgs
from components.model_store import ModelStore, ModelStoreArgs
from components.model_version import ModelVersion, ModelVersionArgs, Publication
from components.platform import Platform, StackBase
from components.rollout_component import Rollout, RolloutArgs
from components.signing_key import SigningKey, SigningKeyArgs
from components.stack import KEYS, PROJECT, check_models_against_groups, raise_first
from edgefleet.config import check_known_key, parse_stack_config
from edgefleet_agent.contract.errors import ConfigError
from edgefleet_agent.contract.manifest import ModelDir, ModelManifest

# (source, the config texts, the StackConfig parsed from them): what `edgefleet synth` parsed before it set the same texts
# as the program's config; read_config takes it once instead of validating the same texts again.
_handed_over: tuple[str, dict[str, str], Any] | None = None


def hand_over_parsed(source: str, texts: dict[str, str], parsed: Any) -> None:
    """Offers `parsed` (parse_stack_config of the texts `texts`, `edgefleet:<key>` -> text) to the next read_config."""
    global _handed_over
    _handed_over = (source, dict(texts), parsed)


def read_config() -> tuple[Any, str]:
    """The engine's config, held to the same rules as `read_stack_file`: an unknown `edgefleet:` key is an error."""
    global _handed_over
    handed, _handed_over = _handed_over, None
    source = f"stacks/Pulumi.{pulumi.get_stack()}.yaml"
    for key in {**get_config_env(), **CONFIG.get()}:
        ns, _, name = key.partition(":")
        if ns == PROJECT:
            check_known_key(name, source)
    cfg = pulumi.Config(PROJECT)
    texts = {key: text for key in KEYS if (text := cfg.get(key)) is not None}
    if handed is not None and handed[0] == source and handed[1] == {f"{PROJECT}:{k}": t for k, t in texts.items()}:
        return handed[2], source  # the same texts, already parsed by synth
    raw = {}
    for key, text in texts.items():
        try:
            raw[key] = json.loads(text)
        except json.JSONDecodeError:
            raw[key] = text
    return parse_stack_config(raw, source), source


def load_models(cfg: Any, project_dir: Path, source: str) -> dict[str, tuple[ModelDir, ModelManifest]]:
    models = {}
    for i, ref in enumerate(cfg.models):
        mdir = ModelDir(project_dir / ref.path)
        if not mdir.exists():
            raise ConfigError(
                source,
                f"{PROJECT}:models[{i}].path: {ref.path} has no model.yaml",
                f"create it with `edgefleet model add {ref.path} --onnx FILE --version X.Y.Z`",
            )
        manifest = mdir.load()
        artifact = mdir.artifact_path(manifest)
        size = artifact.stat().st_size if artifact.is_file() else None
        if size != manifest.size:  # a stat, not a hash: the digest is checked where the model is published
            found = "is missing" if size is None else f"is {size} bytes, the manifest pins {manifest.size}"
            raise ConfigError(
                source,
                f"{PROJECT}:models[{i}].path: {ref.path}/{manifest.file} {found}",
                f"restore the file (git lfs pull?) or record it with `edgefleet model add {ref.path} --onnx FILE --version X.Y.Z`",
            )
        if manifest.name in models:
            raise ConfigError(source, f"{PROJECT}:models[{i}].path: model {manifest.name!r} is listed twice", "list each model once")
        models[manifest.name] = (mdir, manifest)
    return models


def make_platform(name: str, cfg: Any, project_dir: Path) -> Platform:
    """The registry's platform for `name`, built from the stack (parse_stack_config allows only registered names)."""
    return registry.platform(name).load("platform")(cfg, project_dir)


@dataclass
class Fleet:
    config: Any
    platforms: dict[str, Platform]
    bases: dict[str, StackBase]
    groups: dict[str, DeviceGroup]
    models: dict[str, ModelVersion]
    rollouts: dict[str, Rollout]


def declare(project_dir: Path | None = None) -> Fleet:
    project_dir = Path(project_dir or Path.cwd())
    cfg, source = read_config()
    loaded = load_models(cfg, project_dir, source)
    raise_first(
        check_models_against_groups(
            cfg, {n: m for n, (_, m) in loaded.items()}, {n: str(d.manifest_path.relative_to(project_dir)) for n, (d, _) in loaded.items()}
        ),
        source,
    )

    platforms = {p: make_platform(p, cfg, project_dir) for p in cfg.platforms}
    keys = {p: SigningKey(f"{p}-signing", SigningKeyArgs(plat)) for p, plat in platforms.items()}
    stores = {p: ModelStore(f"{p}-models", ModelStoreArgs(plat)) for p, plat in platforms.items()}
    registries = {p: AppRegistry(f"{p}-apps", AppRegistryArgs(plat)) for p, plat in platforms.items()}
    bases = {p: StackBase(key=keys[p], store=stores[p], registry=registries[p]) for p in platforms}
    groups = {
        g.name: DeviceGroup(g.name, DeviceGroupArgs(g, platforms[cfg.group_platform(g)], bases[cfg.group_platform(g)])) for g in cfg.groups
    }
    models = {
        name: ModelVersion(name, ModelVersionArgs(mdir.path, [Publication(plat, bases[p]) for p, plat in platforms.items()]))
        for name, (mdir, _) in loaded.items()
    }
    rollouts = {r.name: Rollout(r.name, RolloutArgs(r, models[r.model], groups, platforms)) for r in cfg.rollouts}

    pulumi.export("models", {n: {"version": m.version, "digest": m.digest, "uri": m.uri} for n, m in models.items()})
    pulumi.export("signingKeys", {p: k.public_key_pem for p, k in keys.items()})
    pulumi.export("registries", {p: r.repository_url for p, r in registries.items()})
    return Fleet(cfg, platforms, bases, groups, models, rollouts)


def main() -> None:
    declare(Path.cwd())
