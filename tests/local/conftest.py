from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.local.signer import create_key_file

ROOT = Path(__file__).resolve().parents[2]


def small_stack(
    devices: int = 40, processes: int = 2, soak: float = 1.0, offline: int = 0, reconnect: float | None = None, deadline: float = 30
) -> dict:
    gate = {
        "soak_seconds": soak,
        "deadline_seconds": deadline,
        "min_reporting_share": 1.0,
        "success_share": 1.0,
        "max_failure_share": 0.0,
        "max_invalid_output_share": 0.0,
        "max_error_rate": 0.01,
    }
    batch = {"count": devices, "prefix": "cam", "labels": {"site": "plant-a"}, "processes": processes, "offline": offline}
    if reconnect is not None:
        batch["reconnect_after_seconds"] = reconnect
    return {
        "config": {
            "edgefleet:platforms": ["local"],
            "edgefleet:models": [{"path": "models/detector"}],
            "edgefleet:groups": [
                {
                    "name": "cameras",
                    "labels": {"site": "plant-a"},
                    "hardware": {
                        "name": "x86-camera",
                        "arch": "amd64",
                        "execution_providers": ["CPUExecutionProvider"],
                        "memory_mb": 1024,
                        "storage_mb": 4096,
                    },
                }
            ],
            "edgefleet:rollouts": [
                {
                    "name": "detector",
                    "model": "detector",
                    "rings": [
                        {"name": "canary", "group": "cameras", "percent": 10, "gate": gate},
                        {"name": "early", "group": "cameras", "percent": 40, "gate": gate},
                        {"name": "broad", "group": "cameras", "percent": 100, "gate": gate},
                    ],
                }
            ],
            "edgefleet:local": {"devices": [batch], "poll_seconds": 0.1, "report_seconds": 0.3},
        }
    }


@pytest.fixture
def project(tmp_path: Path):
    """A scratch copy of the project with a small, fast local fleet; returns a function to rewrite its stack."""
    shutil.copy2(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    (tmp_path / "stacks").mkdir()

    def write(**kwargs) -> Path:
        (tmp_path / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(small_stack(**kwargs), sort_keys=False))
        return tmp_path

    write()
    create_key_file(tmp_path / ".edgefleet" / "keys" / "signing.pem")  # a new stack's first step: edgefleet keys create
    create_key_file(tmp_path / ".edgefleet" / "keys" / "root.pem")  # and its TUF root key: edgefleet keys create --role root
    return write
