"""The platforms whose rules policies/ runs, found through components/registry.py, the only list of platforms.

Each registry entry names its platform's rules module (`policies="policies.<name>"`), which provides:

    stack_settings(config) -> dict   the Settings fields its `edgefleet:<name>` section sets (settings.py merges them)
    exempt(settings) -> bool         whether its ModelStores and SigningKeys are exempt from the hardening rules
    PARTS                            rule name -> its part of that rule, (Graph, Settings) -> findings; a part raises
                                     NotApplicable when the platform declares nothing it checks (hardening.py)
    MEMBERSHIP_AT_LOAD (optional)    True when the stack's load computes each ring's devices and refuses an empty ring

Standard library only. Imported as `policies.platforms` it imports `components.registry`, which is standard library
only and imports nothing. Standalone, in the CrossGuard pack's own virtualenv (policies/ is sys.path[0], the project
is not installed), it appends the checkout's root, the parent of policies/, to sys.path to read the registry, and
imports each platform's rules as a top-level module (`policies.aws` -> `aws`) so they share this copy of the rules.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

if __package__:
    from .graph import dig
else:
    from graph import dig  # type: ignore[no-redef]

if TYPE_CHECKING:
    from .settings import Settings

REGISTRY_FILE = "components/registry.py"
HOOKS = ("stack_settings", "exempt", "PARTS")


class PlatformRulesError(Exception):
    """The registry names a platform's rules module that cannot be used (the message says where and how to fix it)."""


def registry() -> ModuleType:
    if not __package__:
        root = str(Path(__file__).resolve().parent.parent)
        if root not in sys.path:
            sys.path.append(root)
    try:
        from components import registry as loaded
    except ImportError as exc:
        raise PlatformRulesError(
            f"{REGISTRY_FILE}: cannot be imported next to the policy pack ({exc}); fix: run the pack from a checkout of "
            f"the project (`pulumi preview --policy-pack policies`), where components/ sits beside policies/"
        ) from None
    return loaded


@functools.lru_cache(maxsize=None)
def modules() -> tuple[tuple[str, ModuleType], ...]:
    """(platform name, its rules module) for every registered platform, in registry order."""
    out = []
    for name, entry in registry().PLATFORMS.items():
        dotted = entry.policies
        where = f"{REGISTRY_FILE}: PLATFORMS[{name!r}].policies"
        if not dotted.startswith("policies.") or ":" in dotted or dotted.count(".") != 1:
            raise PlatformRulesError(
                f"{where} is {dotted!r}, not a module of policies/; fix: set it to "
                f"'policies.{name}' and put the platform's rules in policies/{name}.py"
            )
        try:
            module = importlib.import_module(dotted if __package__ else dotted.removeprefix("policies."))
        except ImportError as exc:
            raise PlatformRulesError(
                f"{where} names {dotted!r}, which does not import ({exc}); fix: create "
                f"policies/{dotted.removeprefix('policies.')}.py (standard library only)"
            ) from None
        missing = [hook for hook in HOOKS if not hasattr(module, hook)]
        if missing:
            raise PlatformRulesError(
                f"policies/{dotted.removeprefix('policies.')}.py (named by {where}) lacks "
                f"{', '.join(missing)}; fix: define them as policies/platforms.py describes"
            )
        out.append((name, module))
    return tuple(out)


def exempt(rec: Mapping[str, Any], settings: Settings) -> bool:
    """Whether the platform an edgefleet component names (`inputs.platform`) exempts it from the hardening rules."""
    platform = dig(rec, "inputs", "platform")
    module = dict(modules()).get(platform) if isinstance(platform, str) else None
    return module is not None and bool(module.exempt(settings))


def membership_at_load(platform: str) -> bool:
    """Whether loading a stack already computes this platform's ring membership (and refuses empty rings)."""
    return any(name == platform and getattr(module, "MEMBERSHIP_AT_LOAD", False) for name, module in modules())
