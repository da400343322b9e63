"""Reading a stack's configuration: `stacks/Pulumi.<stack>.yaml`, keys under the `edgefleet:` namespace.

The Pulumi program reads these keys through `pulumi.Config` (so `pulumi up` and `pulumi config set` work as
usual); offline commands read the stack file here. Both paths end in `parse_stack_config`, so an error names the
same file and key whichever way the program ran. The schema and its rules are components/stack.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from components.stack import KEYS, PROJECT, parse_stack
from edgefleet_agent.contract import yamlfile
from edgefleet_agent.contract.errors import ConfigError


def stack_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / "stacks" / f"Pulumi.{stack}.yaml"


def check_known_key(name: str, source: str) -> None:
    """A misspelt key would otherwise be dropped silently and its section fall back to defaults."""
    if name not in KEYS:
        raise ConfigError(
            source, f"config.{PROJECT}:{name}: unknown key", f"edgefleet keys are: {', '.join(PROJECT + ':' + k for k in KEYS)}"
        )


def read_stack_file(project_dir: Path, stack: str) -> tuple[dict[str, Any], str]:
    """Returns the stack file's `edgefleet:` keys (namespace stripped) and the path to name in errors."""
    path = stack_file(project_dir, stack)
    source = str(path.relative_to(project_dir)) if path.is_relative_to(project_dir) else str(path)
    if not path.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in path.parent.glob("Pulumi.*.yaml"))
        raise ConfigError(
            source, f"no such stack file (stack {stack!r})", f"use one of: {', '.join(known) or 'none yet'}, or create {source}"
        )
    try:
        doc = yamlfile.load(path.read_text(encoding="utf-8")) or {}
    except yamlfile.DuplicateKeyError as exc:
        raise ConfigError(source, str(exc), f"keep one {exc.key!r}: with two, YAML would silently use the last") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            source, f"expected a mapping with a `config:` key at the top level, got {type(doc).__name__}", "see docs/configuration.md"
        )
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(source, "config: must be a mapping of keys", "see docs/configuration.md")
    raw: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = str(key).partition(":")
        if ns != PROJECT:
            continue  # provider settings such as aws:region belong to their providers
        check_known_key(name, source)
        if isinstance(value, dict) and "secure" in value and len(value) == 1:
            raise ConfigError(source, f"config.{key}: edgefleet keys hold no secrets", "store secrets in the provider's own config")
        raw[name] = value
    return raw, source


def parse_stack_config(raw: dict[str, Any], source: str) -> Any:
    return parse_stack(raw, source)


def load_stack(project_dir: Path, stack: str) -> tuple[Any, str]:
    raw, source = read_stack_file(project_dir, stack)
    return parse_stack_config(raw, source), source


def to_pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """The stack file's keys as the Pulumi engine hands them to a program: namespaced, objects as JSON."""
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
