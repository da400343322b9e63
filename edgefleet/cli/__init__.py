"""`edgefleet` command line. One module per verb group; each registers itself on `app`.

Errors a user can fix (EdgefleetError) print as `error: <where>: <what>` plus a fix, and exit 1;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape

from edgefleet_agent.contract.errors import EdgefleetError, FaultError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Ship ONNX models to edge fleets, ring by ring, as Pulumi infrastructure-as-code.",
)
# Where output is not a terminal (a pipe, a CI log), rich would cut tables to 80 columns ("cana…"): write them full
# width instead, and without colour there or when NO_COLOR is set (rich honours it) or --no-color is given.
PIPE_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=PIPE_WIDTH, no_color=True, highlight=False)


console = _console()
err_console = _console(stderr=True)


@app.callback()
def _options(no_color: bool = typer.Option(False, "--no-color", help="Plain text: no colour or styles (also: NO_COLOR=1).")) -> None:
    if no_color:
        for c in (console, err_console):
            c.no_color = True


# Exit codes, for every command (README, "Exit codes"): 0 success; 1 bad input (the message names the file, the key
# and the fix); 2 usage (a flag the command does not take); 3 a rollout halted and was rolled back; 4 a mandatory
# policy failed; 5 a fault of the environment, not the input (a locked or damaged hub, a full disk, a cloud that cannot
# be reached: no or expired credentials, throttled, 5xx): retry or repair; 6 `status` answered only in part (the
# output names what it could not read and why).
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_ROLLOUT_HALTED = 3
EXIT_POLICY = 4
EXIT_FAULT = 5
EXIT_PARTIAL = 6


def exit_code(exc: EdgefleetError) -> int:
    return EXIT_FAULT if isinstance(exc, FaultError) else EXIT_INPUT


def _register() -> None:
    from edgefleet.cli import fleet, hub, keys, model, plan, policy, samples, synth, trust  # noqa: F401  (each adds its commands to app)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        code = app(args=argv, standalone_mode=False)  # without standalone mode, typer returns Exit codes
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgefleetError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(exit_code(exc))
    except OSError as exc:  # a path the user gave that cannot be read or written, or a full disk
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc.filename or 'disk'))}: {escape(exc.strerror or str(exc))}\n"
                "  fix: free space there and run the command again; what was written before stays consistent",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
            sys.exit(EXIT_FAULT)
        where = re.sub(r"\.([^/]+)\.tmp-\d+-\d+$", r"\1", str(exc.filename or "file"))  # name the target, not fsutil's temp file
        err_console.print(
            f"[bold red]error:[/] {escape(str(where))}: {escape(exc.strerror or str(exc))}\n  fix: check the path exists "
            "and that you may write there",
            highlight=False,
            markup=True,
            soft_wrap=True,
        )
        sys.exit(EXIT_INPUT)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # usage errors from typer's (vendored) click
            exc.show()
            sys.exit(exc.exit_code)
        raise
