"""The one error type users see, on the device and in the controller: where the problem is, what it is, and how
to fix it. The controller's CLI prints it without a traceback; the agent reports it as the reason it refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class EdgefleetError(Exception):
    """A problem with the user's input or environment that they can fix.

    The CLI prints it without a traceback and exits non-zero; everything else is a bug.
    """

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.problem}" if self.where else self.problem
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class FaultError(EdgefleetError):
    """The environment failed, not the input: a locked or damaged database, a full disk. The CLI exits 5 for these,
    so scripts can tell a fault to retry or repair from input to correct (1)."""


class ConfigError(EdgefleetError):
    """A stack file or manifest that does not describe a valid fleet."""


class FormatError(EdgefleetError):
    """A document of the device contract in a format this reader does not know (newer, or not that document)."""


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Renders a pydantic error location as `rings[0].gate.success_share`."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out and not out.endswith(":") else str(part)
    return out or "(top level)"


def from_validation_error(err: ValidationError, source: str, prefix: str = "", cls: type[EdgefleetError] = ConfigError) -> EdgefleetError:
    """Turns a pydantic ValidationError into one EdgefleetError listing every bad field."""
    lines = []
    for e in err.errors():
        loc = field_path(tuple(e["loc"]), prefix)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; unknown keys are errors)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{loc}: {msg}")
    problem = lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines)
    return cls(source, problem, "edit the file so each field above matches its documented type (docs/configuration.md)")
