"""The only list of platforms. Adding a platform is one folder under components/ and one entry here.

Each entry says where the platform's parts live, as `module:attribute` paths loaded on first use, so this
module imports nothing: the CrossGuard pack's own virtualenv (policies/) reads it with no project installed.

    title       how messages name the platform
    config      the schema of its `edgefleet:<name>` stack section (a pydantic model)
    checks      load-time checks, run before anything is declared: (StackConfig) -> [(key, problem, fix)]
    platform    the Platform that declares its resources (components/platform.py)
    mocks       what `edgefleet synth` shows for resources it computes at deploy time
    replace_on  which changed inputs force a replacement, per resource type (what `edgefleet plan` shows)
    status      what `edgefleet status --stack` reads: (project_dir, StackConfig, source, stack, graph) -> status dict
    history     what `edgefleet history --stack` reads: (project_dir, StackConfig, source, stack) -> past rollouts
    policies    its policy rules: policies/<name>.py, importable standalone by the CrossGuard pack

Platforms never import each other; what they share lives below them (components/rollout/, the contract).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PlatformEntry:
    name: str
    title: str  # how messages name it
    config: str
    checks: str
    platform: str
    mocks: str
    replace_on: str
    status: str
    history: str
    policies: str

    def load(self, part: str) -> Any:
        """The object a part names, importing its module now."""
        module, _, attr = getattr(self, part).partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else loaded


PLATFORMS: dict[str, PlatformEntry] = {
    "local": PlatformEntry(
        name="local",
        title="local",
        config="components.local.config:LocalConfig",
        checks="components.local.checks:check_stack",
        platform="components.local.platform:LocalPlatform",
        mocks="components.local.mocks",
        replace_on="components.local.replace_on",
        status="components.local.status:read_status",
        history="components.local.status:read_history",
        policies="policies.local",
    ),
    "aws": PlatformEntry(
        name="aws",
        title="AWS",
        config="components.aws.config:AwsConfig",
        checks="components.aws.checks:check_stack",
        platform="components.aws.platform:AwsPlatform",
        mocks="components.aws.mocks",
        replace_on="components.aws.replace_on",
        status="components.aws.status:read_status",
        history="components.aws.status:read_history",
        policies="policies.aws",
    ),
    "azure": PlatformEntry(
        name="azure",
        title="Azure",
        config="components.azure.config:AzureConfig",
        checks="components.azure.checks:check_stack",
        platform="components.azure.platform:AzurePlatform",
        mocks="components.azure.mocks",
        replace_on="components.azure.replace_on",
        status="components.azure.status:read_status",
        history="components.azure.status:read_history",
        policies="policies.azure",
    ),
}
NAMES: tuple[str, ...] = tuple(PLATFORMS)


def platform(name: str) -> PlatformEntry:
    return PLATFORMS[name]
