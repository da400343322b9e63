"""A key given twice in a YAML file is an error naming the file, the key and both lines, never "the last one wins".

The attack: a PR adds a second `version:` (or `success_share:`) below the first. YAML keeps the last, so a reviewer
reading the first and a tool reading the whole file would disagree about what ships.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgefleet.config import load_stack
from edgefleet_agent.contract.errors import ConfigError
from edgefleet_agent.contract.manifest import ModelDir, parse_manifest_bytes

REPO = Path(__file__).resolve().parents[2]


def test_a_manifest_with_a_version_given_twice_is_refused_naming_both_lines():
    text = (REPO / "models" / "detector" / "model.yaml").read_text()
    assert text.startswith("name: detector\nversion: 1.0.0\n")
    twice = text.replace("version: 1.0.0\n", "version: 1.0.0\nversion: 9.9.9\n", 1)
    with pytest.raises(ConfigError) as err:
        parse_manifest_bytes(twice.encode(), "models/detector/model.yaml")
    assert str(err.value).startswith("models/detector/model.yaml: key 'version' appears twice, on lines 2 and 3")
    assert "keep one 'version'" in str(err.value)


def test_a_duplicate_inside_a_nested_mapping_is_refused_too(tmp_path):
    mdir = tmp_path / "detector"
    shutil.copytree(REPO / "models" / "detector", mdir)
    text = (mdir / "model.yaml").read_text().replace("  arch: amd64\n", "  arch: amd64\n  arch: arm64\n", 1)
    (mdir / "model.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"key 'arch' appears twice, on lines \d+ and \d+"):
        ModelDir(mdir).load()


def test_a_stack_file_with_a_gate_threshold_given_twice_is_refused(tmp_path):
    shutil.copytree(REPO / "stacks", tmp_path / "stacks")
    path = tmp_path / "stacks" / "Pulumi.local.yaml"
    lines = path.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if "success_share" in line)
    assert "{" in lines[at], "the shipped stack writes gates as flow mappings"
    lines[at] = lines[at].replace("success_share: 0.95", "success_share: 0.95, success_share: 0.10", 1)
    path.write_text("".join(lines))
    with pytest.raises(ConfigError) as err:
        load_stack(tmp_path, "local")
    assert f"stacks/Pulumi.local.yaml: key 'success_share' appears twice, on lines {at + 1} and {at + 1}" in str(err.value)


def test_yaml_merge_keys_still_override_without_error():
    from edgefleet_agent.contract.yamlfile import load

    assert load("base: &b {a: 1, b: 2}\nother:\n  <<: *b\n  a: 3\n")["other"] == {"a": 3, "b": 2}
