"""`.github/workflows/preview.yml`: valid workflow YAML that plans each stack once and comments only with a writable token."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "preview.yml"


def workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the bare key `on` as a boolean
    return doc


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name", "").startswith(name))


def test_it_is_a_workflow_github_accepts():
    doc = workflow()
    assert set(doc["on"]) == {"pull_request"} and doc["permissions"] == {"contents": "read"}
    for name, job in doc["jobs"].items():
        assert job["runs-on"] and job["steps"], name
        for s in job["steps"]:
            assert ("uses" in s) != ("run" in s), f"{name}: a step has exactly one of uses/run: {s}"
            if "uses" in s:
                assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+", s["uses"]), s["uses"]
    assert doc["jobs"]["preview-cloud"]["needs"] == "plan"


def test_each_stack_is_planned_once_for_markdown_json_and_the_verdict():
    run = step(workflow()["jobs"]["plan"], "edgefleet plan and policy")["run"]
    assert run.count("bin/edgefleet plan ") == 1 and "bin/edgefleet policy" not in run
    assert '--out "plan-out/$stack.md" --json-out "plan-out/$stack.json"' in run
    assert '"$rc" -eq 4' in run, "exit 4 (a mandatory rule fails) still posts the plan and blocks"


def test_no_comment_or_cloud_preview_for_forks_and_dependabot():
    doc = workflow()
    comment = step(doc["jobs"]["plan"], "Sticky PR comment")["if"]
    for condition in (comment, doc["jobs"]["preview-cloud"]["if"]):
        assert "github.event.pull_request.head.repo.full_name == github.repository" in condition
        assert "github.event.pull_request.user.login != 'dependabot[bot]'" in condition, "github.actor is whoever re-ran the job"
