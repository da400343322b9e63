"""How a rule runs: what a rule is, what it finds, its enforcement level, and the report of a run.

A rule is a check over the graph that yields findings or raises NotApplicable (with why); `run_rule` runs one
under a level, and a stack's Report says which mandatory rules block. The rules themselves are listed in rules.py.

Standard library only; imports nothing of this package at run time, so every module of policies/ may import it,
as `policies.engine` or, in the CrossGuard pack's own virtualenv, as `engine`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from .graph import Graph
    from .settings import Settings

ADVISORY, MANDATORY, DISABLED = "advisory", "mandatory", "disabled"
LEVELS = (ADVISORY, MANDATORY, DISABLED)


@dataclass(frozen=True)
class Finding:
    message: str
    urn: str | None = None
    unverified: bool = False  # could not be checked before deploy (unknown value): reported, never blocks


class NotApplicable(Exception):
    """Raised by a rule that has nothing to check on this stack (and says why)."""


@dataclass(frozen=True)
class Rule:
    name: str
    title: str
    default_level: str
    check: Callable[[Graph, Settings], Iterable[Finding]]
    settings: tuple[str, ...] = ()  # Settings fields it reads: its CrossGuard config keys
    description: str = ""


@dataclass
class RuleResult:
    name: str
    title: str
    level: str
    status: str  # passed | failed | not-applicable | disabled
    findings: list[Finding] = field(default_factory=list)
    note: str = ""

    @property
    def violations(self) -> list[Finding]:
        return [f for f in self.findings if not f.unverified]

    @property
    def blocking(self) -> bool:
        return self.level == MANDATORY and bool(self.violations)


@dataclass
class Report:
    stack: str
    results: list[RuleResult]
    has_base: bool

    @property
    def blocking(self) -> list[RuleResult]:
        return [r for r in self.results if r.blocking]

    @property
    def advisories(self) -> list[RuleResult]:
        return [r for r in self.results if r.level == ADVISORY and r.violations]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "has_base": self.has_base,
            "passed": not self.blocking,
            "blocking": [r.name for r in self.blocking],
            "rules": [
                {**{k: v for k, v in asdict(r).items() if k != "findings"}, "findings": [asdict(f) for f in r.findings]}
                for r in self.results
            ],
        }


def run_rule(rule: Rule, graph: Graph, settings: Settings, level: str | None = None) -> RuleResult:
    level = level or settings.level(rule)
    if level == DISABLED:
        return RuleResult(rule.name, rule.title, level, "disabled", note="disabled by edgefleet:policy.enforcement")
    try:
        findings = list(rule.check(graph, settings))
    except NotApplicable as exc:
        return RuleResult(rule.name, rule.title, level, "not-applicable", note=str(exc))
    status = "failed" if any(not f.unverified for f in findings) else "passed"
    return RuleResult(rule.name, rule.title, level, status, findings)
