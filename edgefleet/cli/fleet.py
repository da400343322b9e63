"""`edgefleet up | status | demo | fleet run`: the local stack end to end."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from components.rollout.engine import FAILED
from components.rollout.report import failure_summary
from edgefleet.cli import EXIT_INPUT, EXIT_PARTIAL, EXIT_ROLLOUT_HALTED, app, console, err_console, exit_code
from edgefleet_agent.contract.errors import EdgefleetError

fleet_app = typer.Typer(no_args_is_help=True, help="Run the local stack's simulated fleet, for `pulumi up --stack local`.")
app.add_typer(fleet_app, name="fleet")


def progress_table(p: dict[str, Any]) -> Table:
    arrow = f"{p.get('previous_version') or 'nothing'} → {p['version']}"
    t = Table(title=f"{p['rollout']}: {p['model']} {arrow}   [{p['status']}]", title_justify="left", expand=False)
    for col in ("ring", "state", "devices", "adopted", "failed", "pending", "p99 ms", "NaN/Inf", "errors", "gate"):
        t.add_column(col, justify="right" if col not in ("ring", "state", "gate") else "left")
    for ring in p["rings"]:
        m = ring.get("measured") or {}
        n = m.get("devices", 0)
        bar = ""
        if n:
            filled = round(10 * m.get("adopted", 0) / n)
            bar = f"{'█' * filled}{'░' * (10 - filled)} {m.get('adopted', 0)}"
        verdict = ring.get("verdict") or {}
        gate = {"pass": "[green]passed[/]", "fail": "[red]failed[/]"}.get(verdict.get("outcome"), "")
        if ring["state"] == "soaking" and ring.get("soak_started"):
            gate = f"soaking {time.time() - ring['soak_started']:.0f}s"
        fmt = lambda v, spec: "" if v is None else format(v, spec)  # noqa: E731
        t.add_row(
            ring["name"],
            ring["state"],
            str(n or ""),
            bar,
            str(m.get("failed", "")),
            str(m.get("pending", "")),
            fmt(m.get("p99_latency_ms"), ".2f"),
            fmt(m.get("invalid_output_share"), ".1%"),
            fmt(m.get("error_rate"), ".1%"),
            gate,
        )
    if p.get("report") and p["status"] in FAILED:
        r = p["report"]
        t.caption = f"[red]halted at {r['failed_ring']}: {'; '.join(r['reasons'])}[/] — rolled back {', '.join(r['rolled_back_rings'])} to {r['rolled_back_to'] or 'no model'}"
    return t


def outcome_line(o) -> str:
    colour = {
        "succeeded": "green",
        "up-to-date": "green",
        "rolled_back": "red",
        "rollback_incomplete": "red",
        "previously-rolled-back": "red",
        "refused": "red",
    }.get(o.status, "white")
    text = f"[{colour}]{o.status}[/] {o.rollout}: {o.model} {o.from_version or 'nothing'} → {o.to_version}"
    if o.kind == "rollback":
        text += " (declared rollback, under a signed rollback order)"
    if o.reopened:
        text += f" (reopened for appended ring{'s' if len(o.reopened) > 1 else ''} {', '.join(o.reopened)})"
    if o.status == "up-to-date":
        text = f"[{colour}]{o.status}[/] {o.rollout}: every ring is set to {o.model} {o.to_version}"
    if o.status in ("previously-rolled-back", "refused"):
        text = f"[{colour}]{o.status}[/] {o.rollout}: {escape(o.problem)}\n  fix: {escape(o.fix)}"
    if o.status in FAILED and o.progress:
        text += f"\n  {escape(failure_summary(o.progress))}"
    return text


def run_up(project_dir: Path, stack: str, as_json: bool, on_fleet=None, abort: str | None = None) -> list:
    from components.local.traffic import describe
    from components.local.up import up
    from edgefleet.synth import synth

    graph = synth(project_dir, stack)
    if as_json:
        return up(project_dir, stack, graph, on_fleet=on_fleet, abort=abort)
    live = Live(console=console, refresh_per_second=4, transient=False)
    last: dict[str, Any] = {}
    started: list[Any] = []

    def fleet_started(fleet) -> None:
        started.append(fleet)
        for model in fleet.models:
            console.print(describe(model, fleet.traffic.get(model)), highlight=False, soft_wrap=True)
        if on_fleet is not None:
            on_fleet(fleet)

    def show(progress: dict[str, Any]) -> None:
        last["p"] = progress
        live.update(progress_table(progress))

    with live:
        outcomes = up(project_dir, stack, graph, on_update=show, on_fleet=fleet_started, abort=abort)
        if "p" in last:
            live.update(progress_table(last["p"]))
    if "p" in last and not console.is_terminal:
        console.line()  # rich leaves a non-terminal's last frame unterminated
    for fleet in started:
        for model, traffic in fleet.traffic.items():
            if model in fleet.models:
                console.print(describe(model, traffic), highlight=False, soft_wrap=True)
    return outcomes


@app.command("up")
def up_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document of results, no live display."),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
    abort: str | None = typer.Option(
        None,
        "--abort",
        metavar="REASON",
        help="Instead, roll every rollout left in flight back to its previous version, under a rollback order signed with REASON.",
    ),
) -> None:
    """Synth the program, compare declared model versions with the hub, and run the staged rollout on the local fleet."""
    from components.local.up import REFUSED

    try:
        outcomes = run_up(project_dir, stack, as_json, abort=abort)
    except EdgefleetError as exc:
        if not as_json:
            raise
        # a script reading --json gets JSON whatever happened: the error, and the exit code the command ends with
        code = exit_code(exc)
        print(json.dumps({"error": {"where": exc.where, "problem": exc.problem, "fix": exc.fix, "exit_code": code}}, indent=2))
        raise typer.Exit(code) from None
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "rollout": o.rollout,
                        "model": o.model,
                        "from": o.from_version,
                        "to": o.to_version,
                        "kind": o.kind,
                        "status": o.status,
                        "reopened": list(o.reopened),
                        "report": (o.progress or {}).get("report"),
                        "problem": o.problem or None,
                        "fix": o.fix or None,
                    }
                    for o in outcomes
                ],
                indent=2,
            )
        )
    else:
        for o in outcomes:
            console.print(outcome_line(o), highlight=False, soft_wrap=True)
        if not outcomes:
            console.print("nothing in flight to abort" if abort is not None else "nothing to roll out: no local rollouts declared")
    if abort is not None:  # rolled back on purpose: success, unless a ring did not confirm it
        if any(o.status == "rollback_incomplete" for o in outcomes):
            raise typer.Exit(EXIT_ROLLOUT_HALTED)
        return
    if any(o.status in FAILED for o in outcomes):
        raise typer.Exit(EXIT_ROLLOUT_HALTED)
    if any(o.status in REFUSED for o in outcomes):
        raise typer.Exit(EXIT_INPUT)


def _status_error(exc: EdgefleetError) -> dict[str, Any]:
    return {"error": {"where": exc.where, "problem": exc.problem, "fix": exc.fix, "exit_code": exit_code(exc)}}


def _render_status(doc: dict[str, Any], stack: str) -> None:
    when = time.strftime("%H:%M:%S", time.localtime(doc["at"]))
    title = f"stack {stack} · {when}" + (" · [bold yellow]PARTIAL[/]" if doc["partial"] else "")
    t = Table(title=title, title_justify="left")
    for col in ("rollout", "ring", "desired", "devices", "reported versions", "drift", "silent"):
        t.add_column(col)

    def n(value: Any) -> str:
        return "?" if value is None else str(value)

    for r in doc["rings"]:
        reported = "?" if r["reported"] is None else ", ".join(f"{v or 'none'}×{k}" for v, k in r["reported"].items())
        t.add_row(
            r["rollout"] + (f" ({r['platform']})" if r.get("platform") and r["platform"] != "local" else ""),
            r["ring"] + (" [yellow](partial)[/]" if r.get("partial") else ""),
            r["desired"] or ("?" if r.get("partial") else "none"),
            n(r["devices"]),
            reported,
            f"[red]{r['drift']}[/]" if r["drift"] else n(r["drift"]),
            n(r["silent"]),
        )
    console.print(t)
    for r in doc["rings"]:
        if r.get("stale"):
            console.print(
                f"[yellow]{r['rollout']}/{r['ring']}: {r['stale']} device(s) serve on with stale update metadata: "
                f"{escape((r.get('notices') or [''])[0])}[/]",
                highlight=False,
                soft_wrap=True,
            )
        for why in r.get("failures") or []:
            console.print(f"[red]{r['rollout']}/{r['ring']}: refused: {escape(why)}[/]", highlight=False, soft_wrap=True)
        for why, count in (r.get("held_reasons") or {}).items():
            console.print(f"[yellow]{r['rollout']}/{r['ring']}: {count} held: {escape(why)}[/]", highlight=False, soft_wrap=True)
    for ro in doc["rollouts"]:
        state = f"last rollout {ro['version']} ({ro['status']})" if ro["status"] else "no rollout record read"
        declared = f"declared {ro['declared']}; " if ro.get("declared") else ""
        console.print(f"{ro['rollout']}: {declared}{state}", highlight=False, soft_wrap=True)
        gate = ro.get("last_gate")
        if gate:
            measured = ", ".join(f"{k}={v}" for k, v in (gate.get("measured") or {}).items() if v is not None)
            reasons = "; ".join(gate.get("reasons") or [])
            console.print(
                f"  last gate: ring {gate['ring']} {gate['state']}"
                + (f" ({gate['outcome']})" if gate.get("outcome") else "")
                + (f": {escape(reasons)}" if reasons else "")
                + (f"\n  measured: {escape(measured)}" if measured else ""),
                highlight=False,
                soft_wrap=True,
            )
    for d in doc["declared"]:
        running = ", ".join(f"{v or 'none'}×{n}" for v, n in d["running"].items()) or "no reports"
        rings = ", ".join(d["set_to"]) or "nothing"
        colour = "green" if d["in_sync"] else "yellow"
        console.print(
            f"[{colour}]{d['rollout']}: declared {d['model']} {d['declared']}; rings set to {rings}; devices run {running}[/]",
            highlight=False,
            soft_wrap=True,
        )
        if not d["in_sync"]:
            console.print(f"  {escape(d['next'])}", highlight=False, soft_wrap=True)
    for g in doc["gaps"]:
        console.print(f"[yellow]partial:[/] {escape(g['where'])}: {escape(g['problem'])}", highlight=False, soft_wrap=True)
        if g.get("fix"):
            console.print(f"  fix: {escape(g['fix'])}", highlight=False, soft_wrap=True)


@app.command("status")
def status_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    as_json: bool = typer.Option(False, "--json", help="JSON for machines (with --watch: one JSON document a line)."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Read again every --interval seconds until Ctrl-C."),
    interval: float = typer.Option(10.0, "--interval", min=0.1, help="Seconds between reads with --watch."),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
) -> None:
    """For every rollout: the declared version, each ring's desired version, devices per reported version, drift,
    silent devices, the rollout's state and its last gate verdict. Exits 6 when part of the answer could not be read
    (the output says which part and why), 5 when the stack's cloud cannot be reached."""
    from edgefleet.status import status_reader

    try:
        read = status_reader(project_dir, stack)
        doc = read()
    except EdgefleetError as exc:
        if not as_json:
            raise
        print(json.dumps(_status_error(exc), indent=None if watch else 2))
        raise typer.Exit(exit_code(exc)) from None
    if not watch:
        if as_json:
            print(json.dumps(doc, indent=2))
        else:
            _render_status(doc, stack)
        if doc["partial"]:
            raise typer.Exit(EXIT_PARTIAL)
        return
    shown: dict[str, Any] | None = doc
    try:
        while True:
            if shown is not None and as_json:
                print(json.dumps(shown), flush=True)
            elif shown is not None:
                if console.is_terminal:
                    console.clear()
                _render_status(shown, stack)
            time.sleep(interval)
            try:
                shown = read()
            except EdgefleetError as exc:  # a later read failing (throttled, token expired) is shown; the watch goes on
                shown = None
                if as_json:
                    print(json.dumps({**_status_error(exc), "at": round(time.time(), 3)}), flush=True)
                else:
                    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        return


@app.command("history")
def history_cmd(
    stack: str | None = typer.Option(None, "--stack", "-s", help="The stack whose rollouts to list (required)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Only rollouts of this model."),
    as_json: bool = typer.Option(False, "--json"),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
) -> None:
    """Past rollouts, oldest first: outcome, rings reached, duration, and the failing gate's numbers."""
    from edgefleet.status import fleet_history

    rows = fleet_history(project_dir, stack, model)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(title=f"history · stack {stack}" + (f" · model {model}" if model else ""), title_justify="left")
    for col in ("started", "rollout", "version", "outcome", "rings reached", "duration", "why it stopped"):
        t.add_column(col, overflow="fold")
    for h in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started_at"])) if h["started_at"] else ""
        colour = {"succeeded": "green", "rolled_back": "red", "rollback_incomplete": "red"}.get(h["outcome"], "yellow")
        why = (f"ring {h['failed_ring']}: " + "; ".join(h["reasons"])) if h["failed_ring"] else ""
        t.add_row(
            started,
            h["rollout_id"],
            f"{h['from'] or 'nothing'} → {h['version']}",
            f"[{colour}]{h['outcome']}[/]",
            ", ".join(h["rings_reached"]) or "none",
            f"{h['duration_seconds']:.0f}s" if h["duration_seconds"] is not None else "in flight",
            escape(why),
        )
    console.print(t)
    if not rows:
        console.print("no rollouts recorded yet", highlight=False)


@app.command("demo")
def demo_cmd(
    workdir: Path | None = typer.Option(
        None,
        "--workdir",
        help="Scratch copy of the project the demo runs in, recreated: a new or empty "
        "directory, or one an earlier demo made; default <project>/.edgefleet/demo.",
    ),
    devices: int = typer.Option(1000, "--devices", help="Fleet size."),
    project: Path | None = typer.Option(
        None,
        "--project",
        help="The edgefleet project to copy; default: the current directory if it is one, else the checkout edgefleet runs from.",
    ),
) -> None:
    """The whole story on a fresh machine: v1 to every ring, a good v2 through all rings, then a bad model
    that halts at the canary and is rolled back. Prints the timeline and writes a picture of it."""
    from edgefleet.cli.demo import find_project, run_demo

    src = find_project(project)
    run_demo(src, workdir if workdir is not None else src / ".edgefleet" / "demo", devices)


@fleet_app.command("run")
def fleet_run_cmd(
    stack: str = typer.Option(..., "--stack", "-s"),
    project_dir: Path = typer.Option(Path("."), "--project-dir"),
    every: float = typer.Option(10.0, "--every", help="Seconds between status lines."),
) -> None:
    """Register the stack's simulated devices in the local hub and run them (and their agent processes) until
    Ctrl-C: the fleet that `pulumi up --stack local`, run in another terminal, rolls out to."""
    from components.local.traffic import describe
    from components.local.up import serve
    from edgefleet.config import load_stack

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ready(fleet, hub) -> None:
        procs = sum(1 for d in fleet.devices if d.kind == "process")
        console.print(
            f"local fleet of stack {stack}: {len(fleet.devices)} devices registered in {hub.path} "
            f"({procs} agent processes), running {', '.join(fleet.models)}",
            highlight=False,
            soft_wrap=True,
        )
        for model in fleet.models:
            console.print(describe(model, fleet.traffic.get(model)), highlight=False, soft_wrap=True)
        console.print(f"now run `pulumi up --stack {stack}` in another terminal; Ctrl-C here stops the fleet", highlight=False)

    def tick(fleet, hub) -> None:
        for model in fleet.models:
            counts: dict[str, int] = {}
            for r in hub.reports(model).values():
                counts[r.version or "none"] = counts.get(r.version or "none", 0) + 1
            running = ", ".join(f"{v}×{n}" for v, n in sorted(counts.items())) or "no reports yet"
            console.print(f"{time.strftime('%H:%M:%S')} {model}: {running}", highlight=False)
            if model in fleet.traffic:
                console.print(f"         {describe(model, fleet.traffic[model])}", highlight=False, soft_wrap=True)

    try:
        cfg, source = load_stack(Path(project_dir).resolve(), stack)
        serve(project_dir, stack, cfg, source, stop, on_ready=ready, on_tick=tick, tick_seconds=every)
    except KeyboardInterrupt:
        err_console.print("fleet stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
