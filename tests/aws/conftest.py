"""Fixtures for the AWS platform tests (helpers live in aws_testkit.py)."""

from __future__ import annotations

import pytest
from aws_testkit import PROJECT, REGION, Graph, synth_graph


@pytest.fixture(scope="session")
def graph() -> Graph:
    """The aws-dev stack as `edgefleet synth --stack aws-dev` evaluates it."""
    return synth_graph(PROJECT)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials so no test can reach a real account, whatever the environment holds."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
