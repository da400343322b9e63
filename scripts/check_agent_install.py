#!/usr/bin/env python3
"""Proves the device agent stands alone: builds the wheel from agent/, installs it into a fresh virtualenv per
extra (none, [greengrass], [iotedge]) and checks what that resolved.

    python3 scripts/check_agent_install.py [--extras base,greengrass,iotedge] [--no-constraints]

For each extra, in $HOME/.cache/edgefleet/agent-check/<extra> (recreated every run; pip's own cache is reused):
  * install the wheel with that extra, constrained by constraints.txt (the versions CI tests with);
  * `pip check`;
  * refuse the controller's packages: edgefleet itself, or any distribution named pulumi*, typer*, rich*,
    matplotlib* or onnx (onnxruntime is expected), naming the chain of requirements that pulled it in;
  * protobuf: onnxruntime itself requires `protobuf>=4.25.8`, so it is always installed; the check fails only
    if a requirement in the agent's tree pins it (==, ~=, < or <=), as pulumi-policy's `protobuf~=5.29.5` does
    on the controller side, and reports who requires it either way;
  * `edgefleet-agent --help`, `python -m edgefleet_agent --help`, and an import of every edgefleet_agent module
    (plus the extra's SDK) from the venv's site-packages, never from this checkout.

Needs Python 3.11+ with pip 22.3+ (`pip --python` installs into the venvs, which get no pip of their own, so
what is installed is exactly what the agent resolved). Exit status 1 on any failure, with what failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import deque
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # every pip carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("base", "greengrass", "iotedge")  # base: no extra
SDK_IMPORT = {"greengrass": "boto3", "iotedge": "azure.iot.device"}
FORBIDDEN_PREFIXES = ("pulumi", "typer", "rich", "matplotlib")  # the controller's: Pulumi, CLI, plotting
FORBIDDEN_EXACT = ("edgefleet", "onnx")  # the controller itself; onnx (graph reading), not onnxruntime
PIN_OPERATORS = ("==", "===", "~=", "<", "<=")

# Run inside a venv: every installed distribution with its requirements (importlib.metadata, stdlib only).
LIST_DISTRIBUTIONS = """
import importlib.metadata as md, json
print(json.dumps([{"name": d.metadata["Name"], "version": d.version, "requires": d.requires or []}
                  for d in md.distributions()]))
"""
# Run inside a venv: import every edgefleet_agent module (and the extra's SDK), from site-packages.
IMPORT_ALL = """
import importlib, pkgutil, sys, edgefleet_agent
mods = sorted(m.name for m in pkgutil.walk_packages(edgefleet_agent.__path__, "edgefleet_agent."))
for m in mods:
    importlib.import_module(m)
for sdk in sys.argv[1:]:
    importlib.import_module(sdk)
assert edgefleet_agent.__file__.startswith(sys.prefix), f"imported from {edgefleet_agent.__file__}, not the venv"
leaked = sorted({n.split(".")[0] for n in sys.modules} & {"edgefleet", "components", "policies", "pulumi", "onnx"})
assert not leaked, f"importing the agent loaded {leaked}"
print(len(mods) + 1)
"""


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"agent-check: {msg}", flush=True)


def run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Runs cmd quietly; on failure prints its output and raises CheckFailed naming `what`."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout + proc.stderr)
        raise CheckFailed(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    return proc


def build_wheel(pip: list[str], work: Path) -> Path:
    """Builds from a clean copy of agent/ so that a stale build/ or egg-info in the checkout cannot leak in."""
    src, dist = work / "src", work / "dist"
    shutil.copytree(ROOT / "agent", src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    run([*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(dist), str(src)], "building the agent wheel")
    (wheel,) = dist.glob("edgefleet_agent-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    strays = sorted(t for t in tops if t != "edgefleet_agent" and not t.endswith(".dist-info"))
    if strays:
        raise CheckFailed(f"the wheel ships more than edgefleet_agent: {strays}")
    return wheel


def active_requirements(dist: dict, extras: set[str]) -> list[Requirement]:
    """dist's requirements that apply with these extras requested (markers evaluated for this interpreter)."""
    reqs = [Requirement(line) for line in dist["requires"]]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""})]


def requirement_tree(dists: list[dict], extra: str | None) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """For each distribution reachable from edgefleet-agent[extra]: the shortest chain of requirements from the
    root to it (e.g. ["edgefleet-agent[iotedge]", "azure-iot-device<3,>=2.12", "requests"]), and the extras
    requested of it."""
    by_name = {canonicalize_name(d["name"]): d for d in dists}
    root = "edgefleet-agent"
    chains = {root: [f"{root}[{extra}]" if extra else root]}
    extras: dict[str, set[str]] = {root: {extra} if extra else set()}
    queue = deque([root])
    while queue:
        name = queue.popleft()
        if name not in by_name:
            continue
        for req in active_requirements(by_name[name], extras[name]):
            child = canonicalize_name(req.name)
            if child in chains and req.extras <= extras[child]:
                continue
            chains.setdefault(child, [*chains[name], str(req)])
            extras.setdefault(child, set()).update(req.extras)
            queue.append(child)
    return chains, extras


def requirers(dists: list[dict], target: str, extras: dict[str, set[str]]) -> list[tuple[str, Requirement]]:
    """The requirements on `target` that distributions in the agent's tree hold."""
    return [
        (d["name"], r)
        for d in dists
        if canonicalize_name(d["name"]) in extras
        for r in active_requirements(d, extras[canonicalize_name(d["name"])])
        if canonicalize_name(r.name) == target
    ]


def check_resolved(dists: list[dict], extra: str | None, label: str) -> list[str]:
    """Problems in the resolved set (empty when it is fine); also says where protobuf comes from."""
    chains, extras = requirement_tree(dists, extra)
    problems = []
    for d in sorted(dists, key=lambda d: canonicalize_name(d["name"])):
        name = canonicalize_name(d["name"])
        if name.startswith(FORBIDDEN_PREFIXES) or name in FORBIDDEN_EXACT:
            chain = " -> ".join(chains.get(name, ["(not required by anything in edgefleet-agent's tree)"]))
            problems.append(f"{d['name']} {d['version']} is installed; pulled in by: {chain}")
    protobuf = next((d for d in dists if canonicalize_name(d["name"]) == "protobuf"), None)
    if protobuf is None:
        say(f"{label}: protobuf not installed")
    else:
        reqs = requirers(dists, "protobuf", extras)
        pins = [(who, r) for who, r in reqs if any(s.operator in PIN_OPERATORS for s in r.specifier)]
        shown = ", ".join(f"{who} ({r})" for who, r in reqs) or "nothing in the tree"
        say(
            f"{label}: protobuf {protobuf['version']} installed, required by {shown}; "
            f"{'PINNED' if pins else 'not pinned by the agent tree'}"
        )
        for who, r in pins:
            chain = " -> ".join([*chains.get(canonicalize_name(who), [who]), str(r)])
            problems.append(f"protobuf {protobuf['version']} is pinned by {who}: {chain}")
    return problems


def check_extra(pip: list[str], wheel: Path, extra: str, venv: Path, constraints: Path | None) -> None:
    label = f"[{extra}]" if extra != "base" else "(no extra)"
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], f"creating {venv}")
    py = str(venv / "bin" / "python")
    spec = f"{wheel}[{extra}]" if extra != "base" else str(wheel)
    pinned = ["--constraint", str(constraints)] if constraints is not None else []
    run([*pip, "--python", py, "install", "--quiet", "--no-input", *pinned, spec], f"installing {wheel.name} {label}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONSAFEPATH"] = "1"  # nothing in the cwd (a checkout's *.egg-info, its packages) is seen
    dists = json.loads(run([py, "-c", LIST_DISTRIBUTIONS], "listing distributions", cwd=venv, env=env).stdout)
    say(f"{label}: installed {len(dists)} distributions in {time.monotonic() - t0:.0f}s into {venv}")

    run([*pip, "--python", py, "check"], f"pip check {label}")
    say(f"{label}: pip check ok")

    problems = check_resolved(dists, None if extra == "base" else extra, label)
    if problems:
        for p in problems:
            say(f"{label}: FORBIDDEN {p}")
        raise CheckFailed(f"{label}: the agent's install is not device-only (see FORBIDDEN above)")
    say(f"{label}: none of edgefleet, pulumi*, typer*, rich*, matplotlib*, onnx installed")

    for cmd in ([str(venv / "bin" / "edgefleet-agent"), "--help"], [py, "-m", "edgefleet_agent", "--help"]):
        out = run(cmd, f"{label}: {' '.join(cmd[-3:])}", cwd=venv, env=env).stdout
        if "edgefleet device agent" not in out:
            raise CheckFailed(f"{label}: {' '.join(cmd)} printed no usage")
    say(f"{label}: edgefleet-agent --help and python -m edgefleet_agent --help ok")

    sdk = [SDK_IMPORT[extra]] if extra in SDK_IMPORT else []
    n = run([py, "-c", IMPORT_ALL, *sdk], f"{label}: importing every edgefleet_agent module", cwd=venv, env=env).stdout.strip()
    say(f"{label}: imported all {n} edgefleet_agent modules{' and ' + sdk[0] if sdk else ''} from the venv")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--extras", default=",".join(EXTRAS), help=f"comma-separated, of {', '.join(EXTRAS)} (default: all)")
    ap.add_argument("--no-constraints", action="store_true", help="resolve freely instead of by constraints.txt")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "edgefleet" / "agent-check")
    args = ap.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        ap.error(f"unknown extras {unknown}")

    t0 = time.monotonic()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    version = subprocess.run([*pip, "--version"], capture_output=True, text=True).stdout.split()
    if len(version) < 2 or tuple(int(x) for x in version[1].split(".")[:2] if x.isdigit()) < (22, 3):
        say(
            f"FAILED: needs pip 22.3 or later beside {sys.executable} (has: {' '.join(version[:2]) or 'none'}); "
            f"run it with the project's venv: .venv/bin/python {Path(__file__).relative_to(ROOT)}"
        )
        return 1
    try:
        build = args.workdir / "build"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        wheel = build_wheel(pip, build)
        say(f"built {wheel.name} from agent/ ({time.monotonic() - t0:.0f}s)")
        constraints = None if args.no_constraints else ROOT / "constraints.txt"
        for extra in extras:
            check_extra(pip, wheel, extra, args.workdir / extra, constraints)
    except CheckFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    say(f"ok: the agent installs and runs alone ({', '.join(extras)}; {time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
