"""A throwaway git repository holding the project's Pulumi.yaml, models/ and stacks/, committed as the base."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from plan_repo import git

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "fleet"
    repo.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", repo / "Pulumi.yaml")
    shutil.copytree(ROOT / "models", repo / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "stacks", repo / "stacks")
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    return repo
