"""What every edgefleet dynamic provider shares: how an input change maps to update or replace."""

from __future__ import annotations

from typing import Any

from pulumi.dynamic import DiffResult


def input_diff(olds: dict[str, Any], news: dict[str, Any], replace_on: tuple[str, ...]) -> DiffResult:
    """Changed inputs (ignoring Pulumi's own `__` keys); those in `replace_on` force a replacement,
    which Pulumi performs create-before-delete."""
    keys = sorted(k for k in set(olds) | set(news) if not k.startswith("__") and k in news)
    changed = [k for k in keys if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=[k for k in changed if k in replace_on], delete_before_replace=False)
