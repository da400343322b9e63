"""The agent on Greengrass, as recipes before agent 0.4.0 ran it (one model from the component's environment, which
`--model` keeps working): CloudWatch metrics where the ring's gate reads them, refusals that exit non-zero, and an
image that holds what it imports. The one-agent-per-device binding is in test_agent_greengrass_handoff.py.

The environment is the model component's configuration (its recipe's defaults, components/aws/recipes.py, merged with
a ring's deployment, components/aws/plan.py components_spec) under the contract's names (MODEL_CONFIGURATION); the
command line is the one those recipes ran (LEGACY_COMMAND). No nucleus, no Docker here.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from agent_testkit import MODEL, REPO, FakeTransport, artifact_bytes

from components.aws.plan import RingComponents, components_spec
from components.aws.recipes import model_recipe
from edgefleet_agent.contract.greengrass import (
    AGENT_CONFIGURATION,
    CLASS_METRIC,
    CONFIDENCE_METRIC,
    DEVICE_METRICS,
    ENV_NAMESPACE,
    MODEL_CONFIGURATION,
    PREDICTIONS_METRIC,
    REQUEST_LATENCY_METRIC,
    REQUIRED_ENV,
)
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.core import DeviceAgent
from edgefleet_agent.transports.greengrass import (
    EXIT_REFUSED,
    CloudWatchMetrics,
    GreengrassEnvironment,
    GreengrassTransport,
    desired_from_environment,
)

REGION = "eu-west-1"
NAMESPACE = "Edgefleet/Agent"
ROLLOUT = "detector"
MODEL_C = "edgefleet.aws-dev.detector.Model"
AGENT_C = "edgefleet.aws-dev.Agent"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-aws-dev/agent:0.1.0"


# -- what Greengrass handed the container (recipes before agent 0.4.0) ------------------------------------------------
LEGACY_ENV = (*MODEL_CONFIGURATION, ENV_NAMESPACE)
LEGACY_COMMAND = (
    "python3 -m agent --transport greengrass --device-id {iot:thingName} --model detector --model-dir /models "
    "--state-dir /state --public-key /state/trusted.pem --report-seconds {configuration:/ReportSeconds}"
)


def _model_recipe(desired: DesiredModel) -> dict:
    manifest = parse_manifest_bytes(desired.manifest.encode(), "test")
    uri = f"s3://bucket/models/{MODEL}/{desired.sha256}.onnx"
    return model_recipe(MODEL_C, manifest, desired.manifest, desired.signature, uri, AGENT_C, "0.1.0")


def component_environment(
    desired: DesiredModel, pem: bytes, model_dir: Path, ring: str = "canary", data: bytes | None = None
) -> dict[str, str]:
    """The agent container's EDGEFLEET_* environment for a ring's deployment of `desired` (a rollback when it
    carries an order), and the artifact placed in `model_dir` under the name Greengrass gives it."""
    model = _model_recipe(desired)
    defaults = model["ComponentConfiguration"]["DefaultConfiguration"]
    config = dict(defaults)
    order = (desired.rollback_order, desired.rollback_signature or "") if desired.rollback_order else None
    update = components_spec(RingComponents(MODEL_C, AGENT_C, "0.1.0", ROLLOUT, ring), desired.version, desired.rollout, order)[MODEL_C]
    for pointer in update["configurationUpdate"].get("reset", []):
        config[pointer.lstrip("/")] = defaults[pointer.lstrip("/")]
    config.update(json.loads(update["configurationUpdate"]["merge"]))
    artifact_name = model["Manifests"][0]["Artifacts"][0]["URI"].rsplit("/", 1)[-1]
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / artifact_name).write_bytes(artifact_bytes(desired) if data is None else data)
    env = {name: str(config[key]) for name, key in MODEL_CONFIGURATION.items()}
    env[ENV_NAMESPACE] = NAMESPACE
    assert AGENT_CONFIGURATION[ENV_NAMESPACE] == "MetricNamespace"
    return env


def recipe_command(pem: bytes, desired: DesiredModel, model_dir: Path, state_dir: Path, key: Path, report_seconds: str = "60") -> list[str]:
    """The old agent recipe's `python3 -m agent …` command, with the container's paths mapped to test directories."""
    words = shlex.split(LEGACY_COMMAND)
    paths = {
        "/models": str(model_dir),
        "/state": str(state_dir),
        "/state/trusted.pem": str(key),
        "{iot:thingName}": "thing-1",
        "{configuration:/ReportSeconds}": report_seconds,
    }
    return [sys.executable, "-m", "agent", *(paths.get(w, w) for w in words[3:])]


def offline_env(component: dict[str, str], region: bool = False) -> dict[str, str]:
    """The process environment: no credentials or endpoint that could reach a real AWS account."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EDGEFLEET_"))}
    env.update(
        component,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        EDGEFLEET_AGENT_PORT="0",  # the inference endpoint on any free port: 8000 may be taken on a test machine
    )
    if region:
        env["AWS_REGION"] = REGION
    return env


def seed(state: Path, pem: bytes, desired: DesiredModel) -> None:
    agent = DeviceAgent("thing-1", MODEL, state, pem, FakeTransport(desired))
    agent.sync()
    assert agent.current_version == desired.version
    agent.close()


def served(state: Path, pem: bytes) -> tuple[str | None, str | None]:
    """What a restart would serve, after re-verifying it."""
    agent = DeviceAgent("thing-1", MODEL, state, pem, FakeTransport())
    agent.start()
    try:
        return agent.current_version, agent.status
    finally:
        agent.close()


@pytest.fixture
def aws_offline(monkeypatch):
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", REGION)  # the recipe passes AWS_REGION into the container


# -- the environment -----------------------------------------------------------------------------------------------------
def test_the_components_environment_is_the_desired_model(tmp_path, keys, v110):
    env = component_environment(v110, keys.pem, tmp_path / "models", ring="early")
    assert set(REQUIRED_ENV) <= set(env) == set(LEGACY_ENV)
    desired = GreengrassTransport(MODEL, tmp_path / "models", environ=env).desired("thing-1", MODEL)
    assert desired == dataclasses.replace(v110, uri=(tmp_path / "models" / f"{v110.sha256}.onnx").as_uri(), rollout=ROLLOUT)
    assert Path(desired.uri.removeprefix("file://")).read_bytes() == artifact_bytes(v110)
    transport = GreengrassTransport(MODEL, tmp_path / "models", environ=env)
    assert (transport.metrics.namespace, transport.metrics.rollout, transport.metrics.ring) == (NAMESPACE, ROLLOUT, "early")


def test_an_unparsable_manifest_still_yields_a_model_the_agent_refuses(tmp_path, keys, v110, make_agent):
    env = GreengrassEnvironment.from_environ(
        {**component_environment(v110, keys.pem, tmp_path / "m"), "EDGEFLEET_MODEL_MANIFEST": "version: 9.9.9\n[not yaml"}
    )
    desired = desired_from_environment(env, MODEL, tmp_path / "m")
    assert (desired.version, desired.sha256, desired.size) == ("9.9.9", "", 0)
    agent = make_agent(transport=FakeTransport(desired))
    agent.sync()
    assert agent.build_report().error.startswith("signature does not verify")


# -- metrics ------------------------------------------------------------------------------------------------------------
def serve_and_report(desired, keys, tmp_path, device: str, inferences: int) -> None:
    """One agent as the nucleus runs it: installs `desired`, serves `inferences` requests, files one report."""
    env = component_environment(desired, keys.pem, tmp_path / "models")
    transport = GreengrassTransport(MODEL, tmp_path / "models", environ=env)  # builds its client on the first report
    agent = DeviceAgent(device, MODEL, tmp_path / "state", keys.pem, transport)
    try:
        agent.sync()
        for _ in range(inferences):
            agent.infer()
        agent.report()
    finally:
        agent.close()
    assert transport.metrics.pending == 0


def test_metrics_land_where_the_gate_reads_them(tmp_path, keys, v110, aws_offline):
    import boto3
    from moto import mock_aws

    from components.aws.hub import METRICS, AwsHub

    with mock_aws():
        serve_and_report(v110, keys, tmp_path, "thing-1", 40)

        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        hub = AwsHub(
            region=REGION,
            stack="aws-dev",
            bucket="unused",
            metric_namespace=NAMESPACE,
            rollout=ROLLOUT,
            model=MODEL,
            model_component=MODEL_C,
            agent_component=AGENT_C,
            agent_version="0.1.0",
            sites={},
            clients=SimpleNamespace(cloudwatch=PercentileAsMaximum(cloudwatch)),
        )
        got = hub.ring_metrics("canary", "1.1.0", since=time.time() - 300)
        assert (got["inferences"], got["errors"], got["invalid"]) == (40, 0, 0) and got["latency"] > 0

        # The gate's own queries, each pinned to the unit the contract names; moto computes no percentiles,
        # so the p99 query is read as Maximum (one data point per window either way).
        units = {"Inferences": "Count", "Errors": "Count", "InvalidOutputs": "Count", "LatencyP99Ms": "Milliseconds"}
        queries = hub.metric_queries("canary", "1.1.0", 300)
        assert {q["MetricStat"]["Metric"]["MetricName"] for q in queries} == {name for name, _ in METRICS.values()} == set(units)
        for q in queries:
            stat = q["MetricStat"]
            stat["Unit"] = units[stat["Metric"]["MetricName"]]
            if stat["Stat"] == "p99":
                stat["Stat"] = "Maximum"
        start = time.time() - 300
        resp = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=time.time() + 60)
        values = {r["Id"]: r["Values"] for r in resp["MetricDataResults"]}
        assert values["inferences"] == [40.0] and values["errors"] == [0.0] and values["invalid"] == [0.0]
        assert len(values["latency"]) == 1 and values["latency"][0] > 0
        for q in queries:
            q["MetricStat"]["Unit"] = "Seconds"
        wrong = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=time.time() + 60)
        assert all(r["Values"] == [] for r in wrong["MetricDataResults"])

        # Besides the health metrics, the agent files the quality summaries the quality gates read (per class, per
        # confidence bin): all of them under the ring, rollout and version the gate queries.
        listed = cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]
        quality = {PREDICTIONS_METRIC, CLASS_METRIC, CONFIDENCE_METRIC, REQUEST_LATENCY_METRIC}
        assert {m["MetricName"] for m in listed} == set(units) | quality
        ring = {("Ring", "canary"), ("Rollout", ROLLOUT), ("Version", "1.1.0")}
        for m in listed:
            dims = {(d["Name"], d["Value"]) for d in m["Dimensions"]} - {("Variant", "fp32")}  # the per-build copy's
            assert dims == ring if m["MetricName"] in units else ring <= dims, m
        copies = {m["MetricName"] for m in listed if {"Name": "Variant", "Value": "fp32"} in m["Dimensions"]}
        assert copies == set(units) | quality, "the window is filed once more for the build the agent serves"


def test_a_nan_device_files_its_own_metric_where_the_gate_looks_for_offenders(tmp_path, keys, v120_nan, aws_offline):
    """A real agent serving a model that outputs NaN: its window files DeviceInvalidOutputShare under its thing name,
    which the hub's offender read returns; it files no DeviceErrorRate, since nothing failed."""
    import boto3
    from moto import mock_aws

    from components.aws.hub import DEVICE_METRICS as HUB_DEVICE_METRICS
    from components.aws.hub import AwsHub

    assert sorted(HUB_DEVICE_METRICS.values()) == sorted(name for name, _ in DEVICE_METRICS)
    with mock_aws():
        serve_and_report(v120_nan, keys, tmp_path, "thing-7", 25)

        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        per_device = [
            m for m in cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"] if any(d["Name"] == "Device" for d in m["Dimensions"])
        ]
        assert [(m["MetricName"], sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in per_device] == [
            ("DeviceInvalidOutputShare", [("Device", "thing-7"), ("Ring", "canary"), ("Rollout", ROLLOUT), ("Version", "1.2.0")])
        ]
        hub = AwsHub(
            region=REGION,
            stack="aws-dev",
            bucket="unused",
            metric_namespace=NAMESPACE,
            rollout=ROLLOUT,
            model=MODEL,
            model_component=MODEL_C,
            agent_component=AGENT_C,
            agent_version="0.1.0",
            sites={},
            clients=SimpleNamespace(cloudwatch=cloudwatch),
        )
        assert hub.device_offenders("canary", "1.2.0", time.time() - 300, ["error_rate", "invalid_output_share"]) == (
            ("thing-7", "invalid_output_share", 1.0),
        )


def test_only_a_window_with_errors_or_invalid_outputs_files_per_device_metrics():
    """Each (metric, dimensions) pair CloudWatch sees is a billed metric: healthy windows must create none."""
    metrics = CloudWatchMetrics(NAMESPACE, ROLLOUT, "canary", client=FlakyCloudWatch(failures=0))

    def device_datums(**fields):
        report = dataclasses.replace(_report("1.1.0", inferences=200), **fields)
        return {d["MetricName"]: d for d in metrics.datums(report) if any(x["Name"] == "Device" for x in d["Dimensions"])}

    assert device_datums() == {}
    assert device_datums(errors=0, invalid_outputs=0, inferences=0) == {}
    assert device_datums(errors=3, inferences=0) == {}, "no rate without inferences"
    bad = device_datums(errors=5, invalid_outputs=50)
    assert {k: (d["Value"], d["Unit"]) for k, d in bad.items()} == {
        "DeviceErrorRate": (0.025, "None"),
        "DeviceInvalidOutputShare": (0.25, "None"),
    }
    assert bad["DeviceErrorRate"]["Dimensions"] == [
        {"Name": "Rollout", "Value": ROLLOUT},
        {"Name": "Ring", "Value": "canary"},
        {"Name": "Version", "Value": "1.1.0"},
        {"Name": "Device", "Value": "thing-1"},
    ]
    assert set(device_datums(invalid_outputs=1)) == {"DeviceInvalidOutputShare"}
    assert len(metrics.datums(dataclasses.replace(_report("1.1.0"), errors=1, invalid_outputs=1))) == 6


class PercentileAsMaximum:
    """moto computes no percentile statistics: answer the gate's p99 query with Maximum, which is the same
    value when each device files one LatencyP99Ms data point per window."""

    def __init__(self, cloudwatch) -> None:
        self.cloudwatch = cloudwatch

    def get_metric_data(self, **kwargs):
        kwargs = json.loads(json.dumps(kwargs, default=str))
        for q in kwargs["MetricDataQueries"]:
            if q["MetricStat"]["Stat"] == "p99":
                q["MetricStat"]["Stat"] = "Maximum"
        return self.cloudwatch.get_metric_data(**kwargs)


class FlakyCloudWatch:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict] = []

    def put_metric_data(self, **kwargs) -> None:
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            raise ConnectionError("endpoint unreachable")


def _report(version: str | None, inferences: int = 5, p99: float | None = 1.5) -> DeviceReport:
    return DeviceReport(
        device_id="thing-1",
        model=MODEL,
        version=version,
        sha256="ab" * 32 if version else None,
        status="ok",
        inferences=inferences,
        p99_latency_ms=p99,
        agent_version="0.1.0",
        reported_at=time.time(),
    )


def test_a_metrics_outage_is_logged_kept_for_later_and_never_raised(caplog):
    client = FlakyCloudWatch(failures=1)
    metrics = CloudWatchMetrics(NAMESPACE, ROLLOUT, "canary", client=client)
    assert metrics.publish(_report("1.1.0")) is False
    assert metrics.pending == 4 and "CloudWatch metrics not published (4 data points kept" in caplog.text
    assert metrics.publish(_report("1.1.0", p99=None)) is True
    assert len(client.calls[-1]["MetricData"]) == 7 and metrics.pending == 0
    assert metrics.publish(_report(None)) is True and len(client.calls) == 2  # nothing served: nothing to file

    down = CloudWatchMetrics(NAMESPACE, ROLLOUT, "canary", client=FlakyCloudWatch(failures=10_000))
    for _ in range(150):
        down.publish(_report("1.1.0"))
    assert down.pending == 400  # bounded: the oldest go first
    unconfigured = CloudWatchMetrics(NAMESPACE, "", "", client=FlakyCloudWatch(failures=0))
    assert unconfigured.publish(_report("1.1.0")) is False and "metrics are not published" in caplog.text


def test_the_agent_serves_on_when_cloudwatch_is_unreachable(tmp_path, keys, v110):
    env = offline_env(component_environment(v110, keys.pem, tmp_path / "models"))  # no region: every report fails
    cmd = recipe_command(keys.pem, v110, tmp_path / "models", tmp_path / "state", keys.pem_path, report_seconds="0.1")
    log = tmp_path / "agent.log"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("CloudWatch metrics not published") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "now serving detector 1.1.0" in log.read_text()


# -- refusals fail the deployment ------------------------------------------------------------------------------------------
def _refusal_cases(publisher, keys, v100, v110):
    tampered = bytearray(artifact_bytes(v110))
    tampered[len(tampered) // 2] ^= 0xFF
    return {
        "tampered artifact": (v100, v110, bytes(tampered), "sha256 mismatch: the downloaded artifact has sha256"),
        "wrong key": (
            v100,
            publisher.publish("1.1.0", "detector-1.1.0.onnx", signer=keys.other),
            None,
            "signature does not verify: signed by key",
        ),
        "downgrade without order": (v110, v100, None, "downgrade from 1.1.0 to 1.0.0 refused: no signed rollback order"),
    }


@pytest.mark.parametrize("case", ["tampered artifact", "wrong key", "downgrade without order"])
def test_a_refused_model_exits_non_zero_and_keeps_the_previous_one(tmp_path, keys, publisher, v100, v110, case):
    before, desired, data, reason = _refusal_cases(publisher, keys, v100, v110)[case]
    state = tmp_path / "state"
    seed(state, keys.pem, before)
    env = offline_env(component_environment(desired, keys.pem, tmp_path / "models", data=data), region=True)
    proc = subprocess.run(
        recipe_command(keys.pem, desired, tmp_path / "models", state, keys.pem_path),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_REFUSED, proc.stderr
    assert f"edgefleet-agent: refused detector {desired.version}: {reason}" in proc.stderr
    assert f"keeping detector {before.version} in {state}" in proc.stderr
    assert served(state, keys.pem) == (before.version, "ok")


def test_a_downgrade_with_a_signed_rollback_order_is_accepted(tmp_path, keys, publisher, v100, v110, v120_nan):
    state = tmp_path / "state"
    seed(state, keys.pem, v110)

    wrong = publisher.rollback(v100, off=v120_nan)  # an order that moves devices off 1.2.0, not off 1.1.0
    env = offline_env(component_environment(wrong, keys.pem, tmp_path / "wrong"), region=True)
    cmd = recipe_command(keys.pem, wrong, tmp_path / "wrong", state, keys.pem_path) + ["--install-only"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_REFUSED and "the signed rollback order moves devices off 1.2.0" in proc.stderr
    assert served(state, keys.pem) == ("1.1.0", "ok")

    order = publisher.rollback(v100, off=v110)
    env = offline_env(component_environment(order, keys.pem, tmp_path / "models"), region=True)
    assert env["EDGEFLEET_ROLLBACK_ORDER"] == order.rollback_order
    cmd = recipe_command(keys.pem, order, tmp_path / "models", state, keys.pem_path) + ["--install-only"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "under a signed rollback order: ring canary failed its gate" in proc.stderr
    assert served(state, keys.pem) == ("1.0.0", "ok")


def test_an_incomplete_environment_cannot_start(tmp_path, keys, v110):
    env = offline_env(
        {k: v for k, v in component_environment(v110, keys.pem, tmp_path / "m").items() if k != "EDGEFLEET_MODEL_MANIFEST"}, region=True
    )
    proc = subprocess.run(
        recipe_command(keys.pem, v110, tmp_path / "m", tmp_path / "s", keys.pem_path),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "edgefleet-agent: EDGEFLEET_MODEL_MANIFEST is not set" in proc.stderr


# -- the distribution ----------------------------------------------------------------------------------------------------
IMPORTS = (
    "import edgefleet_agent.__main__, edgefleet_agent.core, edgefleet_agent.transports.greengrass, "
    "edgefleet_agent.transports.iotedge, edgefleet_agent.transports.local, edgefleet_agent.store, edgefleet_agent.serving"
)


def test_the_agent_imports_nothing_of_the_controller_and_only_what_its_distribution_installs():
    """The device install is `pip install ./agent`: every module the agent loads must come from that distribution or
    from what its dependencies install (.ci/run proves the same in a fresh virtualenv; this catches it sooner)."""
    code = (
        "import json, sys\nbefore = set(sys.modules)\n" + IMPORTS + "\n"
        "mods = {m: getattr(sys.modules[m], '__file__', None) for m in set(sys.modules) - before}\n"
        "print(json.dumps(mods))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded: dict[str, str | None] = json.loads(proc.stdout)
    tops = {m.split(".")[0] for m in loaded}
    assert not tops & {
        "pulumi",
        "typer",
        "rich",
        "onnx",
        "boto3",
        "botocore",
        "azure",
        "jsonschema",
        "matplotlib",
        "moto",
        "edgefleet",
        "components",
        "policies",
        "agent",
    }, tops

    # what this checkout's distribution declares (agent/pyproject.toml), not the metadata of whichever edgefleet-agent
    # the venv installed earlier: a dependency added here must be checked here
    project = tomllib.loads((REPO / "agent" / "pyproject.toml").read_text())["project"]
    wanted = {re.split(r"[<>=!~;\s\[(]", req, maxsplit=1)[0].lower().replace("_", "-") for req in project["dependencies"]}
    assert wanted == {"onnxruntime", "numpy", "cryptography", "pyyaml", "pydantic", "semver", "tuf", "croniter"}
    closure, todo = set(), [w for w in wanted if _installed(w)]
    while todo:
        dist = todo.pop()
        if dist in closure:
            continue
        closure.add(dist)
        for req in importlib.metadata.requires(dist) or []:
            if "extra ==" not in req:
                name = re.split(r"[<>=!~;\s\[(]", req, maxsplit=1)[0].lower().replace("_", "-")
                if _installed(name):
                    todo.append(name)
    owners = importlib.metadata.packages_distributions()
    installed = {m.split(".")[0] for m, f in loaded.items() if f and "site-packages" in Path(f).parts}
    assert installed >= {"onnxruntime", "numpy", "cryptography", "yaml", "pydantic", "semver"}
    for top in sorted(installed):
        dists = {d.lower().replace("_", "-") for d in owners.get(top, [])}
        assert dists & closure, f"{top} (from {dists or 'nowhere'}) is imported by the agent but its distribution does not install it"


def test_the_image_installs_the_distribution_and_keeps_python_m_agent():
    dockerfile = (REPO / "agent" / "Dockerfile").read_text()
    assert not re.search(r"^COPY .*\.py", dockerfile, re.MULTILINE), "the image installs the distribution, it copies no module list"
    assert 'pip install "/tmp/edgefleet-agent[greengrass,iotedge]"' in dockerfile
    assert (
        not re.search(r"^ENTRYPOINT", dockerfile, re.MULTILINE) and 'CMD ["python3", "-m", "agent", "--transport", "iotedge"' in dockerfile
    )


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_help_names_the_transports_and_exit_codes():
    proc = subprocess.run([sys.executable, "-m", "agent", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for text in (
        "--transport {local,greengrass,iotedge}",
        "exit codes:",
        f"{EXIT_REFUSED}  the desired model was refused",
        "--model-dir",
        "--install-only",
    ):
        assert text in proc.stdout


# -- the status shadow ---------------------------------------------------------------------------------------------------
def test_the_status_shadow_is_written_on_change_and_heartbeat_only_and_matches_the_iot_data_model(aws_offline, caplog):
    import boto3
    from botocore.stub import ANY, Stubber

    from edgefleet_agent.contract.greengrass import STATUS_SHADOW_FIELDS, STATUS_SHADOW_HEARTBEAT, status_shadow, status_shadow_field
    from edgefleet_agent.transports.greengrass import StatusShadow

    client = boto3.client("iot-data", region_name=REGION, endpoint_url="https://example-ats.iot.eu-west-1.amazonaws.com")
    stub = Stubber(client)
    now = [1000.0]
    shadow = StatusShadow(MODEL, "detector@1.1.0+x", "canary", client=client, clock=lambda: now[0])
    sent: list[dict] = []
    client.meta.events.register(
        "provide-client-params.iot-data.UpdateThingShadow", lambda params, **_: sent.append(json.loads(params["payload"]))
    )
    for _ in range(3):  # first report, a change of version, the heartbeat
        stub.add_response(
            "update_thing_shadow", {"payload": b"{}"}, {"thingName": "thing-1", "shadowName": f"edgefleet-{MODEL}", "payload": ANY}
        )
    with stub:
        assert shadow.publish(_report("1.0.0"))
        now[0] += 60
        assert shadow.publish(_report("1.0.0")), "unchanged and fresh: nothing sent"
        assert shadow.publish(_report("1.1.0"))
        now[0] += STATUS_SHADOW_HEARTBEAT
        assert shadow.publish(_report("1.1.0"))
    stub.assert_no_pending_responses()
    assert [d["state"]["reported"]["version"] for d in sent] == ["1.0.0", "1.1.0", "1.1.0"]
    assert set(sent[0]["state"]) == {"reported"} and len(json.dumps(sent[0])) < 1024, "reported only, small"
    assert sent[0]["state"]["reported"]["ring"] == "canary" and sent[0]["state"]["reported"]["rollout"] == "detector@1.1.0+x"
    assert status_shadow_field(MODEL, "version") == f"shadow.name.{status_shadow(MODEL)}.reported.version"
    assert STATUS_SHADOW_FIELDS[:6] == ("version", "sha256", "status", "rollout", "ring", "at"), "fields are only appended"
    assert sent[0]["state"]["reported"]["deferred"] is None, "nothing held: null, which the shadow drops"

    class Down:
        def update_thing_shadow(self, **_):
            raise ConnectionError("no route")

    assert StatusShadow(MODEL, "r", "canary", client=Down()).publish(_report("1.0.0")) is False
    assert "status shadow edgefleet-detector not updated" in caplog.text
    assert StatusShadow(MODEL, "r", "canary").publish(_report("1.0.0")) is False, "off Greengrass without a client: nothing"
