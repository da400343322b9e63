"""One agent per device on Greengrass: the stack's agent component serves every model on one endpoint, and each
model component's Startup hands its desired state over and waits for the agent's verdict (components/aws/recipes.py).

The model component's Startup is the generated script itself, run with sh against temporary directories, its recipe
variables replaced the way the nucleus interpolates them; the agent is the agent recipe's Run command (paths mapped to
the same directories). No nucleus, no Docker here: Greengrass's ordering, retries and rollback are not exercised.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from agent_testkit import MODEL, REPO, Clock, artifact_bytes, oip_infer

from components.aws.plan import RingComponents, components_spec
from components.aws.recipes import EXIT_REFUSED, agent_recipe, model_recipe
from edgefleet_agent.contract.greengrass import CURRENT, STOPPED, VERDICT, VERDICT_KEYS
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.transports.greengrass import GreengrassSupervisor, HandoffTransport, handoff_root

AGENT_C = "edgefleet.aws-dev.Agent"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/edgefleet-aws-dev/agent:0.4.0"
IMAGE_IN = np.zeros((1, 3, 224, 224), np.float32)


def startup(desired: DesiredModel, work: Path, artifacts: Path, ring: str = "canary", data: bytes | None = None) -> subprocess.Popen:
    """The model component's Startup for a ring's deployment of `desired` (a rollback when it carries an order)."""
    manifest = parse_manifest_bytes(desired.manifest.encode(), "test")
    component = f"edgefleet.aws-dev.{desired.model}.Model"
    recipe = model_recipe(
        component, manifest, desired.manifest, desired.signature, f"s3://b/models/{desired.model}/{desired.sha256}.onnx", AGENT_C, "0.4.0"
    )
    config = dict(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    order = (desired.rollback_order, desired.rollback_signature or "") if desired.rollback_order else None
    spec = components_spec(RingComponents(component, AGENT_C, "0.4.0", f"{desired.model}-rollout", ring), desired.version, "rid", order)
    assert list(spec) == [component], "ring deployments do not name the agent: the model component depends on it"
    update = spec[component]["configurationUpdate"]
    for pointer in update.get("reset", []):
        config[pointer.lstrip("/")] = recipe["ComponentConfiguration"]["DefaultConfiguration"][pointer.lstrip("/")]
    config.update(json.loads(update["merge"]))
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    env = {"PATH": "/usr/bin:/bin"} | {
        var: str(config[value.removeprefix("{configuration:/").rstrip("}")]) for var, value in lifecycle["Setenv"].items()
    }
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"{desired.sha256}.onnx").write_bytes(artifact_bytes(desired) if data is None else data)
    script = lifecycle["Startup"]["Script"].replace(f"{{{AGENT_C}:work:path}}", str(work)).replace("{artifacts:path}", str(artifacts))
    return subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def start_agent(work: Path, key: Path, log: Path) -> subprocess.Popen:
    """The agent recipe's Run command (after `exec docker run … image`), the container's paths mapped to test ones."""
    recipe = agent_recipe(AGENT_C, "0.4.0", IMAGE, "Edgefleet/Agent", "unused")
    script = recipe["Manifests"][0]["Lifecycle"]["Run"]["Script"]
    words = shlex.split(script[script.index("python3 -m agent") :])
    mapped = {"/state": str(work), "/state/trusted.pem": str(key), "{iot:thingName}": "thing-1", "{configuration:/ReportSeconds}": "60"}
    args = [mapped.get(w, w) for w in words[3:]]
    args[args.index("--port") + 1] = "0"  # 8000 in the recipe; any free port on a test machine
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO / 'agent'}:{REPO}", "AWS_EC2_METADATA_DISABLED": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args, "--sync-seconds", "0.1"], cwd=REPO, env=env, stderr=log.open("w"), stdout=subprocess.DEVNULL
    )


def version_of(url: str, model: str) -> str:
    status, doc = oip_infer(url, model, IMAGE_IN)
    assert status == 200, doc
    return doc["model_version"]


def test_one_agent_serves_every_model_and_takes_new_versions_without_restarting(tmp_path, keys, publisher, v100, v110):
    work, log = tmp_path / "work", tmp_path / "agent.log"
    classifier = publisher.publish("2.0.0", "detector-1.0.0.onnx", model="classifier")
    # First deployment: the model component's Startup may begin before the agent is up; its wait tolerates that.
    first = startup(v100, work, tmp_path / "a1")
    time.sleep(0.5)
    agent = start_agent(work, keys.pem_path, log)
    try:
        code, out, err = finish(first)
        assert code == 0 and "detector 1.0.0 installed and verified by the agent" in out, err + log.read_text()
        assert finish(startup(classifier, work, tmp_path / "a2"))[0] == 0
        endpoint = json.loads((work / "endpoint.json").read_text())
        url, pid = endpoint["url"], endpoint["pid"]
        assert pid == agent.pid and url.startswith("http://127.0.0.1:")
        assert (version_of(url, MODEL), version_of(url, "classifier")) == ("1.0.0", "2.0.0")  # one port, two models

        # A new version while the applications keep asking: same process, the endpoint answers throughout.
        failures: list[object] = []
        seen: set[str] = set()
        done = threading.Event()

        def ask() -> None:
            while not done.is_set():
                status, doc = oip_infer(url, MODEL, IMAGE_IN)
                if status != 200:
                    failures.append(doc)
                else:
                    seen.add(doc["model_version"])

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            code, out, err = finish(startup(v110, work, tmp_path / "a3", ring="early"))
            assert code == 0, err
            deadline = time.monotonic() + 30
            while "1.1.0" not in seen:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            done.set()
            asker.join()
        assert failures == [] and seen == {"1.0.0", "1.1.0"}
        assert agent.poll() is None and json.loads((work / "endpoint.json").read_text())["pid"] == pid
        assert version_of(url, "classifier") == "2.0.0"

        # A version signed by another key: the verdict says refused, the Startup fails with the reason, the agent
        # keeps serving 1.1.0 and keeps running.
        forged = publisher.publish("1.2.0", "detector-1.1.0.onnx", signer=keys.other)
        code, out, err = finish(startup(forged, work, tmp_path / "a4"))
        assert code == EXIT_REFUSED
        assert "edgefleet: the agent refused detector 1.2.0: signature does not verify" in err and "it keeps serving 1.1.0" in err
        verdict = dict(line.split("=", 1) for line in (handoff_root(work) / MODEL / VERDICT).read_text().splitlines())
        assert list(verdict) == list(VERDICT_KEYS) and verdict["status"] == "refused" and verdict["serving"] == "1.1.0"
        assert version_of(url, MODEL) == "1.1.0" and agent.poll() is None

        # Greengrass's device-side rollback re-runs the previous component's Startup: the same desired state again.
        assert finish(startup(v110, work, tmp_path / "a3", ring="early"))[0] == 0

        # A gate's rollback: a lower version only under a signed order, through the same hand-off.
        code, _, err = finish(startup(v100, work, tmp_path / "a1"))
        assert code == EXIT_REFUSED and "downgrade from 1.1.0 to 1.0.0 refused: no signed rollback order" in err
        code, out, err = finish(startup(publisher.rollback(v100, off=v110), work, tmp_path / "a1"))
        assert code == 0 and "detector 1.0.0 installed" in out, err
        assert version_of(url, MODEL) == "1.0.0" and json.loads((work / "endpoint.json").read_text())["pid"] == pid
        assert sorted(p.name for p in (handoff_root(work) / MODEL).iterdir() if p.name.startswith("d-")) == [
            (handoff_root(work) / MODEL / CURRENT).read_text().strip()
        ], "each Startup leaves one committed desired state"
    finally:
        agent.terminate()
        assert agent.wait(30) == 0, log.read_text()


def test_a_model_whose_component_is_gone_is_unloaded_after_the_grace_period(tmp_path, keys, v110):
    """Shutdown leaves a marker; Startup (an update, a restart) removes it within seconds. A marker the agent has seen
    for REMOVAL_GRACE_SECONDS means the component was removed: the model is unloaded; the others keep serving."""
    work = tmp_path / "work"
    assert finish_sync(startup(v110, work, tmp_path / "a"), work, keys) is not None
    clock = Clock()
    transport = HandoffTransport(work, "", clock=clock, grace_seconds=300)
    supervisor = GreengrassSupervisor(transport, "thing-1", work, keys.pem, threaded=False)
    try:
        supervisor.step()
        assert supervisor.agents[MODEL].agent.current_version == "1.1.0"
        (handoff_root(work) / MODEL / STOPPED).touch()
        supervisor.step()
        clock.now += 299
        supervisor.step()
        assert MODEL in supervisor.agents, "a stop shorter than the grace period (an update, a restart) unloads nothing"
        clock.now += 2
        supervisor.step()
        assert MODEL not in supervisor.agents
    finally:
        supervisor.close()


def finish_sync(proc: subprocess.Popen, work: Path, keys) -> str | None:
    """Answers one Startup with an in-process supervisor (no agent process): the verdict it waits for."""
    transport = HandoffTransport(work, "")
    supervisor = GreengrassSupervisor(transport, "thing-1", work, keys.pem, threaded=False)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            supervisor.step()
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        supervisor.close()
    code, out, err = finish(proc)
    assert code == 0, err
    return out


@pytest.mark.parametrize("broken", ["no current", "current names no directory"])
def test_an_incomplete_handoff_is_not_a_desired_state(tmp_path, broken):
    model_dir = handoff_root(tmp_path) / MODEL
    model_dir.mkdir(parents=True)
    if broken == "current names no directory":
        (model_dir / CURRENT).write_text("d-123\n")
    transport = HandoffTransport(tmp_path, "")
    assert transport.refresh() == set() and transport.desired("thing-1", MODEL) is None


def test_each_handed_over_model_keeps_its_status_shadow_under_its_own_deployment(tmp_path, keys, v110):
    """`edgefleet status` counts a ring's devices per version from the agents' status shadows: the one agent of a
    device keeps one per model, with the rollout and ring its model component handed over."""
    from edgefleet_agent.contract.state import DeviceReport

    work = tmp_path / "work"
    assert finish_sync(startup(v110, work, tmp_path / "a"), work, keys) is not None

    class Shadows:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str, dict]] = []

        def update_thing_shadow(self, thingName: str, shadowName: str, payload: bytes) -> dict:
            self.sent.append((thingName, shadowName, json.loads(payload)))
            return {}

    client = Shadows()
    transport = HandoffTransport(work, "", shadow_client=client)
    assert transport.refresh() == {MODEL}
    handoff = transport.handoff(MODEL)
    assert handoff is not None
    transport.report(DeviceReport("thing-1", MODEL, "1.1.0", v110.sha256, "ok"))
    [(thing, name, doc)] = client.sent
    reported = doc["state"]["reported"]
    assert (thing, name) == ("thing-1", f"edgefleet-{MODEL}")
    assert (reported["version"], reported["ring"], reported["rollout"]) == ("1.1.0", handoff.ring, handoff.desired.rollout)
