"""Typed stack config: a bad stack file fails naming the file, the key and the reason."""

from __future__ import annotations

import copy
import json

import pytest

from components.stack import KEYS, StackConfig, check_stack, hardware_runs
from edgefleet.config import load_stack, parse_stack_config, read_stack_file, to_pulumi_config
from edgefleet_agent.contract.errors import ConfigError
from edgefleet_agent.contract.manifest import HardwareProfile

from .conftest import assert_user_error, local_stack_config, write_stack

SOURCE = "stacks/Pulumi.test.yaml"


def load(project, config: dict) -> StackConfig:
    write_stack(project, "test", config)
    return load_stack(project, "test")[0]


def error_of(project, config: dict | None = None, text: str | None = None, stack: str = "test") -> ConfigError:
    if config is not None or text is not None:
        write_stack(project, stack, config, text)
    with pytest.raises(ConfigError) as info:
        load_stack(project, stack)
    return info.value


def ring(cfg: dict, i: int) -> dict:
    return cfg["edgefleet:rollouts"][0]["rings"][i]


def aws_stack(cfg: dict) -> dict:
    cfg["edgefleet:platforms"] = ["aws"]
    cfg["edgefleet:aws"] = {"region": "us-east-1"}
    del cfg["edgefleet:local"]
    return cfg


def test_local_stack_parses(project_copy):
    cfg, source = load_stack(project_copy, "local")
    assert source == "stacks/Pulumi.local.yaml"
    assert cfg.platforms == ["local"] and [g.name for g in cfg.groups] == ["cameras"]
    assert [(r.name, r.percent) for r in cfg.rollouts[0].rings] == [("canary", 5), ("early", 30), ("broad", 100)]
    assert cfg.rollouts[0].rings[0].gate.soak_seconds == 4
    assert cfg.local.devices[0].count == 1000
    assert cfg.group_platform(cfg.groups[0]) == "local"


def test_provider_keys_are_left_to_their_providers(project_copy):
    cfg = local_stack_config()
    cfg["aws:region"] = "eu-west-1"
    cfg["azure-native:clientSecret"] = {"secure": "AAABAJ..."}
    write_stack(project_copy, "test", cfg)
    raw, source = read_stack_file(project_copy, "test")
    assert source == SOURCE
    assert set(raw) == {"platforms", "models", "groups", "rollouts", "local"}


def test_to_pulumi_config_is_what_the_engine_passes():
    out = to_pulumi_config({"platforms": ["local"], "signing": {"key_file": "k.pem"}, "name": "x"})
    assert out == {"edgefleet:platforms": '["local"]', "edgefleet:signing": '{"key_file": "k.pem"}', "edgefleet:name": "x"}


# -- read_stack_file errors ----------------------------------------------------------------------------------------
def only_local_stack(project) -> None:
    for path in (project / "stacks").glob("Pulumi.*.yaml"):
        if path.name != "Pulumi.local.yaml":
            path.unlink()


def test_missing_stack_lists_the_known_stacks(project_copy):
    only_local_stack(project_copy)
    write_stack(project_copy, "dev", local_stack_config())
    err = error_of(project_copy, stack="nope")
    assert err.where == "stacks/Pulumi.nope.yaml"
    assert err.problem == "no such stack file (stack 'nope')"
    assert err.fix == "use one of: dev, local, or create stacks/Pulumi.nope.yaml"


def test_unknown_edgefleet_key(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:groupz"] = cfg.pop("edgefleet:groups")
    err = error_of(project_copy, cfg)
    assert str(err).startswith(f"{SOURCE}: config.edgefleet:groupz: unknown key")
    assert all(f"edgefleet:{k}" in err.fix for k in KEYS)


def test_a_local_batch_contradicting_its_groups_hardware_fails_at_load_so_plan_and_policy_see_it(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:local"]["devices"][0]["execution_providers"] = ["CUDAExecutionProvider"]
    err = error_of(project_copy, cfg)
    assert str(err).startswith(f"{SOURCE}: edgefleet:local.devices[0].execution_providers: ['CUDAExecutionProvider'] disagrees with")
    assert "local devices take their group's hardware profile" in err.fix


def test_under_pulumi_up_an_unknown_key_fails_the_same_way(monkeypatch):
    """`pulumi up` hands the program its config through PULUMI_CONFIG, not the stack file: a typo must not be dropped."""
    import pulumi

    from edgefleet.program import read_config

    cfg = {k: json.dumps(v) for k, v in local_stack_config().items()}
    cfg["edgefleet:polcy"] = json.dumps({"production": True})
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**cfg, "aws:region": "eu-west-1"}))
    monkeypatch.setattr(pulumi, "get_stack", lambda: "prod")
    with pytest.raises(ConfigError) as info:
        read_config()
    assert str(info.value).startswith("stacks/Pulumi.prod.yaml: config.edgefleet:polcy: unknown key")
    del cfg["edgefleet:polcy"]
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(cfg))
    parsed, source = read_config()
    assert source == "stacks/Pulumi.prod.yaml" and [g.name for g in parsed.groups]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("config: [unclosed\n", "not valid YAML"),
        ("config:\n  edgefleet:platforms: [local\n  other: 1\n", "not valid YAML"),
        ("config:\n\tedgefleet:platforms: [local]\n", "not valid YAML"),
        ("- config\n", "expected a mapping with a `config:` key at the top level, got list"),
        ("just a string\n", "expected a mapping with a `config:` key at the top level, got str"),
        ("config: [1, 2]\n", "config: must be a mapping of keys"),
    ],
)
def test_bad_yaml(project_copy, text, expected):
    err = error_of(project_copy, text=text)
    assert err.where == SOURCE and err.problem.startswith(expected)


def test_bad_yaml_says_where(project_copy):
    err = error_of(project_copy, text="config:\n  edgefleet:platforms: [local\n  other: 1\n")
    assert "line 2" in err.problem


def test_non_utf8_stack_file(project_copy):
    (project_copy / "stacks" / "Pulumi.test.yaml").write_bytes(b"config:\n  edgefleet:platforms: [\xff]\n")
    err = error_of(project_copy)
    assert err.where == SOURCE and err.problem.startswith("not valid YAML")


def test_edgefleet_keys_hold_no_secrets(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:policy"] = {"secure": "v1:abc"}
    assert str(error_of(project_copy, cfg)).startswith(f"{SOURCE}: config.edgefleet:policy: edgefleet keys hold no secrets")


# -- typed fields ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: ring(c, 0)["gate"].update(soak=3), "edgefleet:rollouts[0].rings[0].gate.soak: unknown key (check the spelling"),
        (lambda c: ring(c, 0).update(percent="5"), "edgefleet:rollouts[0].rings[0].percent: Input should be a valid number (got '5')"),
        (lambda c: ring(c, 0).update(percent=0), "edgefleet:rollouts[0].rings[0].percent: Input should be greater than 0"),
        (lambda c: ring(c, 0).update(percent=101), "edgefleet:rollouts[0].rings[0].percent: Input should be less than or equal to 100"),
        (
            lambda c: ring(c, 0)["gate"].update(success_share=1.5),
            "edgefleet:rollouts[0].rings[0].gate.success_share: Input should be less than or equal to 1",
        ),
        (lambda c: c.update({"edgefleet:platforms": "local"}), "edgefleet:platforms: Input should be a valid list (got 'local')"),
        (lambda c: c.update({"edgefleet:platforms": ["gcp"]}), "edgefleet:platforms[0]: Input should be 'local', 'aws' or 'azure'"),
        (lambda c: c["edgefleet:groups"][0].update(name="Cameras"), "edgefleet:groups[0].name: String should match pattern"),
        (lambda c: c["edgefleet:groups"][0]["hardware"].update(arch="x86"), "edgefleet:groups[0].hardware.arch: Input should be"),
        (
            lambda c: c["edgefleet:groups"][0].update(labels={}),
            "edgefleet:groups[0]: a group needs labels or devices to select its members",
        ),
        (lambda c: c.pop("edgefleet:models"), "edgefleet:models: required key is missing"),
        (
            lambda c: c["edgefleet:local"]["devices"][0].update(processes=600, offline=600),
            "edgefleet:local.devices[0]: processes (600) + offline (600) exceed count (1000)",
        ),
    ],
)
def test_typed_field_errors_name_the_key(project_copy, mutate, expected):
    cfg = local_stack_config()
    mutate(cfg)
    err = error_of(project_copy, cfg)
    assert err.where == SOURCE
    assert expected in err.problem, err.problem
    assert "edgefleet:." not in err.problem and "Value error," not in err.problem


def test_deadline_shorter_than_soak(project_copy):
    cfg = local_stack_config()
    ring(cfg, 1)["gate"].update(soak_seconds=400, deadline_seconds=60)
    err = error_of(project_copy, cfg)
    assert err.problem == (
        "edgefleet:rollouts[0].rings[1].gate: deadline_seconds (60.0) is shorter than soak_seconds (400.0); no ring could ever pass"
    )


def test_duplicate_ring_names(project_copy):
    cfg = local_stack_config()
    ring(cfg, 1)["name"] = "canary"
    assert error_of(project_copy, cfg).problem == "edgefleet:rollouts[0]: ring names must be unique within a rollout: canary"


def test_duplicate_group_names(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:groups"].append(copy.deepcopy(cfg["edgefleet:groups"][0]))
    err = error_of(project_copy, cfg)
    assert str(err).startswith(f"{SOURCE}: edgefleet:groups[1].name: group 'cameras' is declared twice")
    assert err.fix == "give each group a unique name"


def test_duplicate_rollout_names(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:rollouts"].append(copy.deepcopy(cfg["edgefleet:rollouts"][0]))
    err = error_of(project_copy, cfg)
    assert err.problem == "edgefleet:rollouts[1].name: rollout 'detector' is declared twice"


def test_ring_whose_group_does_not_exist(project_copy):
    cfg = local_stack_config()
    ring(cfg, 2)["group"] = "doorbells"
    err = error_of(project_copy, cfg)
    assert err.problem == "edgefleet:rollouts[0].rings[2].group: no device group named 'doorbells'"
    assert err.fix == "declare it under edgefleet:groups or use one of: cameras"


def test_percent_ring_on_a_non_local_platform(project_copy):
    cfg = aws_stack(local_stack_config())
    err = error_of(project_copy, cfg)
    assert err.problem.startswith(
        "edgefleet:rollouts[0].rings[0].percent: percentage rings need the device registry, "
        "which only the local platform keeps; group 'cameras' is on aws (and "
    ), "the rings' percents, and the local stack's shadow phase and holdback, which need the local platform too"
    assert "labels" in err.fix


def test_percent_must_grow_ring_by_ring(project_copy):
    cfg = local_stack_config()
    ring(cfg, 0)["percent"] = 50
    assert error_of(project_copy, cfg).problem == (
        "edgefleet:rollouts[0].rings[1].percent: 30.0 does not exceed the previous ring's 50.0 for group 'cameras' (percent is cumulative)"
    )


def test_platform_without_its_section(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:platforms"] = ["local", "azure"]
    err = error_of(project_copy, cfg)
    assert err.problem.startswith("edgefleet:azure: platform 'azure' is listed in platforms but has no `edgefleet:azure` section")


def test_a_root_threshold_above_the_root_keys_listed_fails_at_load(project_copy):
    """No root could ever be signed: refused when the stack is read, before `edgefleet up` or `trust init` writes one."""
    cfg = local_stack_config()
    cfg["edgefleet:trust"] = {"root_keys": [".edgefleet/keys/root.pem"], "root_threshold": 2}
    err = error_of(project_copy, cfg)
    assert err.problem.startswith("edgefleet:trust.root_threshold: 2 root keys must sign a root, and trust.root_keys lists 1")
    assert err.fix == "list more root keys or lower the threshold" and SOURCE in str(err)
    cfg["edgefleet:trust"]["root_keys"].append(".edgefleet/keys/root-2.pem")
    assert load(project_copy, cfg).trust.root_threshold == 2


def test_platform_listed_twice(project_copy):
    cfg = local_stack_config()
    cfg["edgefleet:platforms"] = ["local", "local"]
    assert error_of(project_copy, cfg).problem.startswith("edgefleet:platforms: lists a platform twice")


def test_infinite_soak(project_copy):
    cfg = local_stack_config()
    ring(cfg, 0)["gate"].update(soak_seconds=float("inf"), deadline_seconds=float("inf"))
    assert error_of(project_copy, cfg).problem.startswith("edgefleet:rollouts[0].rings[0].gate.soak_seconds: must be finite")


def test_every_problem_is_counted(project_copy):
    cfg = local_stack_config()
    for r in cfg["edgefleet:rollouts"][0]["rings"]:
        r["group"] = "doorbells"
    assert error_of(project_copy, cfg).problem.endswith("no device group named 'doorbells' (and 2 more)")


def test_check_stack_is_pure_and_lists_everything():
    raw = {k.removeprefix("edgefleet:"): v for k, v in local_stack_config().items()}
    raw["rollouts"][0]["rings"][0]["group"] = "nope"
    raw["rollouts"].append(copy.deepcopy(raw["rollouts"][0]))
    cfg = StackConfig.model_validate(raw)
    keys = [k for k, _, _ in check_stack(cfg)]
    assert keys == ["rollouts[0].rings[0].group", "rollouts[1].name", "rollouts[1].rings[0].group"]
    with pytest.raises(ConfigError):
        parse_stack_config(raw, "x.yaml")


def test_hardware_runs():
    target = HardwareProfile(
        name="t", arch="arm64", execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"], memory_mb=512, storage_mb=64
    )
    device = HardwareProfile(name="d", arch="arm64", execution_providers=["CPUExecutionProvider"], memory_mb=1024, storage_mb=64)
    assert hardware_runs(target, device)
    assert not hardware_runs(target, device.model_copy(update={"arch": "amd64"}))
    assert not hardware_runs(target, device.model_copy(update={"memory_mb": 256}))
    assert not hardware_runs(target, device.model_copy(update={"execution_providers": ["OpenVINOExecutionProvider"]}))


# -- through the CLI: the exact message a user sees ------------------------------------------------------------------
def test_bad_config_through_synth_cli(run_cli, project_copy):
    cfg = local_stack_config()
    ring(cfg, 1)["gate"].update(soak_seconds=400, deadline_seconds=60)
    write_stack(project_copy, "test", cfg)
    res = run_cli("synth", "--stack", "test", "--project-dir", project_copy)
    assert_user_error(res, f"error: {SOURCE}: edgefleet:rollouts[0].rings[1].gate: deadline_seconds (60.0) is shorter than soak_seconds")


def test_missing_stack_through_synth_cli(run_cli, project_copy):
    only_local_stack(project_copy)
    res = run_cli("synth", "--stack", "prod", "--project-dir", project_copy)
    assert_user_error(
        res,
        "error: stacks/Pulumi.prod.yaml: no such stack file (stack 'prod')",
        "fix: use one of: local, or create stacks/Pulumi.prod.yaml",
    )
