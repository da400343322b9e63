"""Shared fixtures for the foundation tests: project copies, model directories, keys, and a CLI runner.

The CLI runs in-process (`edgefleet.cli.main([...])`, exactly what the console script calls) so each call
costs milliseconds; `run_cli_subprocess` runs the real console script for the few tests that check the
process boundary (exit status, nothing but the message on stderr).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "models" / "samples"
DETECTOR = REPO / "models" / "detector"
EDGEFLEET_BIN = Path(sys.executable).with_name("edgefleet")
TARGET = "name=x86-gw,arch=amd64,providers=CPUExecutionProvider,memory_mb=256,storage_mb=64"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_text(self) -> str:
        """stderr with line wrapping undone, so assertions do not depend on the terminal width."""
        return " ".join(self.err.split())

    @property
    def out_text(self) -> str:
        return " ".join(self.out.split())


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """Runs `edgefleet ARGS` in-process (optionally from `cwd`) and returns exit code, stdout and stderr.

    Captures at the file-descriptor level, so anything native code (onnxruntime's logger) writes shows up too."""
    from edgefleet.cli import main

    def run(*args: str | os.PathLike[str], cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capfd.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capfd.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_cli_subprocess(*args: str | os.PathLike[str], cwd: Path) -> CliResult:
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([str(EDGEFLEET_BIN), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """Exit 1, `error:` on stderr naming every fragment (file path, problem), and no traceback."""
    assert result.code == 1, f"exit {result.code}\nstdout: {result.out}\nstderr: {result.err}"
    text = result.err_text
    assert text.startswith("error:"), result.err
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in stderr:\n{result.err}"
    assert "Traceback" not in result.err


def copy_project(dest: Path) -> Path:
    """Copies what synth needs of the Pulumi project: Pulumi.yaml, __main__.py, models/ and stacks/."""
    dest.mkdir(parents=True)
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "models", dest / "models", ignore=shutil.ignore_patterns("*.sig", "__pycache__"))
    shutil.copytree(REPO / "stacks", dest / "stacks")
    return dest


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A throwaway copy of the Pulumi project (see copy_project)."""
    return copy_project(tmp_path / "project")


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """tmp/models with a copy of models/detector and the sample ONNX files."""
    models = tmp_path / "models"
    shutil.copytree(DETECTOR, models / "detector", ignore=shutil.ignore_patterns("*.sig"))
    shutil.copytree(SAMPLES, models / "samples")
    return models


@pytest.fixture
def detector_dir(models_dir: Path) -> Path:
    return models_dir / "detector"


def clone_model(src: Path, dest: Path) -> Path:
    """Copies a model directory under a new name, renaming the manifest's `name:` to match."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.sig"))
    manifest = dest / "model.yaml"
    manifest.write_text(re.sub(r"^name: .*$", f"name: {dest.name}", manifest.read_text(), count=1, flags=re.M))
    return dest


def edit_manifest(model_dir: Path, **changes) -> None:
    """Rewrites model.yaml with top-level fields changed (the values are YAML-serialised as given)."""
    path = model_dir / "model.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    """(private key, public key) created with `edgefleet keys create`'s code path."""
    from components.local.signer import create_key_file, public_key_path

    key = create_key_file(tmp_path_factory.mktemp("keys") / "signing.pem")
    return key, public_key_path(key)


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory) -> tuple[Path, Path]:
    from components.local.signer import create_key_file, public_key_path

    key = create_key_file(tmp_path_factory.mktemp("other-keys") / "other.pem")
    return key, public_key_path(key)


def write_stack(project: Path, stack: str, config: dict | None = None, text: str | None = None) -> Path:
    path = project / "stacks" / f"Pulumi.{stack}.yaml"
    path.write_text(text if text is not None else yaml.safe_dump({"config": config}, sort_keys=False))
    return path


def local_stack_config() -> dict:
    """The committed local stack's `config:` mapping (a fresh copy each call)."""
    return yaml.safe_load((REPO / "stacks" / "Pulumi.local.yaml").read_text())["config"]
