"""The base of a plan: the stack's graph as it was at a git ref, synthesized from a temporary `git worktree`
(removed afterwards, even on error) by that checkout's own program, in a child process so its modules never mix
with the working tree's.

Imports the standard library and the contract's errors; edgefleet.synth only when a base is synthesized.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgefleet_agent.contract.errors import EdgefleetError


def _git(cwd: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EdgefleetError(
            "git", "git is not installed", "install git; `edgefleet plan --base` reads the base from a git worktree"
        ) from None
    if out.returncode != 0:
        raise EdgefleetError(
            f"git {' '.join(args)}", (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout).strip() else "failed"
        )
    return out.stdout.strip()


@contextmanager
def base_worktree(project_dir: Path, ref: str) -> Iterator[Path]:
    """The project directory as it is at `ref`, in a temporary git worktree that is always removed."""
    project_dir = Path(project_dir).resolve()
    try:
        root = Path(_git(project_dir, "rev-parse", "--show-toplevel")).resolve()
    except EdgefleetError:
        raise EdgefleetError(
            str(project_dir), "not inside a git repository", "run `edgefleet plan` from a git checkout of the project"
        ) from None
    try:
        commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except EdgefleetError:
        raise EdgefleetError(
            f"--base {ref}",
            "no such commit, branch or tag in this repository",
            f"fetch it first (e.g. `git fetch origin {ref.split('/')[-1]}`) or pass a commit",
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-base-"))
    tree = tmp / "tree"
    try:
        _git(root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        yield tree / project_dir.relative_to(root)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True, check=False)


def empty_graph(project: str, stack: str, note: str) -> dict[str, Any]:
    return {
        "format": "edgefleet-graph/v1",
        "project": project,
        "stack": stack,
        "stack_file": None,
        "config": {},
        "resources": [],
        "note": note,
    }


def synth_subprocess(project_dir: Path, stack: str, where: str = "") -> dict[str, Any]:
    """`edgefleet synth` of `project_dir` in a child process, preferring that checkout's own edgefleet code."""
    out = Path(tempfile.mkdtemp(prefix="edgefleet-graph-")) / "graph.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(project_dir), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "edgefleet", "synth", "--stack", stack, "--project-dir", str(project_dir), "--out", str(out)],
            cwd=project_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if proc.returncode != 0:
            detail = "\n  ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise EdgefleetError(
                f"synth at base{' ' + where if where else ''}",
                f"stack {stack} does not synthesize there:\n  {detail}",
                "fix the base, or compare against another ref with --base",
            )
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def base_graph(project_dir: Path, stack: str, ref: str) -> dict[str, Any]:
    """The stack's graph at `ref`; an empty graph when the project or the stack did not exist there yet."""
    from edgefleet.synth import project_name

    project = project_name(project_dir)
    with base_worktree(project_dir, ref) as base_dir:
        if not (base_dir / "Pulumi.yaml").is_file():
            return empty_graph(project, stack, f"the project did not exist at {ref}")
        if not (base_dir / "stacks" / f"Pulumi.{stack}.yaml").is_file():
            return empty_graph(project, stack, f"stack {stack} did not exist at {ref}")
        return synth_subprocess(base_dir, stack, where=ref)
