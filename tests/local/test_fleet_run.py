"""`edgefleet fleet run` (the fleet `pulumi up --stack local` rolls out to), one fleet per hub, devices' hardware
from their group, and `edgefleet demo` from any directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from components.local.fleet import LocalFleet, exclusive, local_devices, lock_holder, lock_path
from components.local.hub import LocalHub
from components.local.up import up
from edgefleet.cli import EXIT_INPUT, main
from edgefleet.cli.demo import MARKER, _prepare, find_project, run_demo
from edgefleet.config import load_stack
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError

ROOT = Path(__file__).resolve().parents[2]


def edit_stack(p: Path, change) -> None:
    path = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def agent_processes(hub_path: Path) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"edgefleet_agent" in cmd and str(hub_path).encode() in cmd:
                out.append(int(d.name))
    return out


# -- edgefleet fleet run ---------------------------------------------------------------------------------------
def test_fleet_run_registers_the_devices_holds_the_fleet_lock_and_stops_its_agents_on_sigterm(project):
    p = project(devices=8, processes=1)
    hub_path = p / ".edgefleet" / "local" / "hub.sqlite"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "400", "TERM": "dumb"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "fleet", "run", "--stack", "local", "--project-dir", str(p), "--every", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd="/",
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 60
        while not any("pulumi up --stack local" in line for line in lines) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert any("8 devices registered" in line for line in lines), lines
        assert any("now run `pulumi up --stack local` in another terminal" in line for line in lines), lines
        assert lock_holder(lock_path(hub_path, "fleet")) == str(proc.pid)
        assert [d["id"] for d in LocalHub(hub_path).device_rows()] == [f"cam-{i:04d}" for i in range(8)]
        while not agent_processes(hub_path) and time.time() < deadline:
            time.sleep(0.1)
        assert agent_processes(hub_path), "the first device of the batch runs as an agent process"

        with pytest.raises(EdgefleetError) as err:
            up(p, "local", synth(p, "local"))
        text = str(err.value)
        assert f"a local fleet is already running on the hub {hub_path} (pid {proc.pid} holds this lock)" in text
        assert str(lock_path(hub_path, "fleet")) in text and f"kill {proc.pid}" in text
        assert LocalHub(hub_path).rollouts() == [], "nothing may start while another fleet runs"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    reader.join(5)
    assert proc.returncode == 0, lines
    assert lock_holder(lock_path(hub_path, "fleet")) is None
    assert agent_processes(hub_path) == [], "agent processes must stop with the fleet"


def test_fleet_run_refuses_a_stack_with_no_local_rollout_naming_the_file(project, capsys):
    p = project()
    edit_stack(p, lambda c: c.update({"edgefleet:rollouts": []}))
    with pytest.raises(SystemExit) as exit_:
        main(["fleet", "run", "--stack", "local", "--project-dir", str(p)])
    assert exit_.value.code == EXIT_INPUT
    err = " ".join(capsys.readouterr().err.split())
    assert "stacks/Pulumi.local.yaml" in err and "no rollout of local targets local device groups" in err


# -- one fleet per hub -------------------------------------------------------------------------------------------
def test_a_second_fleet_on_one_hub_is_refused_and_a_killed_holder_frees_the_lock(project, tmp_path):
    p = project(devices=4, processes=0)
    cfg, _ = load_stack(p, "local")
    hub_path = p / cfg.local.hub
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
                "from components.local.fleet import exclusive; "
                "cm = exclusive(Path(sys.argv[2]), 'x', 'y'); cm.__enter__(); print('held', flush=True); time.sleep(60)"
            ),
            str(ROOT),
            str(lock_path(hub_path, "fleet")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        fleet = LocalFleet(cfg, hub_path, tmp_path / "devices", b"", ["detector"])
        with pytest.raises(EdgefleetError) as err:
            fleet.start()
        assert f"pid {holder.pid} holds this lock" in str(err.value)
    finally:
        holder.kill()
        holder.wait(10)
    assert lock_holder(lock_path(hub_path, "fleet")) is None, "the kernel drops a SIGKILLed holder's lock"
    with exclusive(lock_path(hub_path, "fleet"), "x", "y"):
        assert lock_holder(lock_path(hub_path, "fleet")) == str(os.getpid())


# -- hardware: the group's profile is the device's ---------------------------------------------------------------
def test_local_devices_take_their_groups_hardware_profile(project):
    p = project(devices=3)
    edit_stack(
        p,
        lambda c: c["edgefleet:groups"][0]["hardware"].update(
            arch="arm64", execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        ),
    )
    cfg, source = load_stack(p, "local")
    devices = local_devices(cfg, source)
    assert {(d.arch, d.providers) for d in devices} == {("arm64", ("CUDAExecutionProvider", "CPUExecutionProvider"))}


@pytest.mark.parametrize(
    "key, value, theirs", [("execution_providers", ["CUDAExecutionProvider"], "['CPUExecutionProvider']"), ("arch", "arm64", "amd64")]
)
def test_a_device_batch_that_contradicts_its_groups_hardware_is_a_config_error_naming_file_and_key(project, key, value, theirs):
    p = project(devices=3)
    edit_stack(p, lambda c: c["edgefleet:local"]["devices"][0].update({key: value}))
    with pytest.raises(ConfigError) as err:
        up(p, "local", synth(p, "local"))
    text = str(err.value)
    assert text.startswith("stacks/Pulumi.local.yaml: edgefleet:local.devices[0]." + key)
    assert f"disagrees with {theirs}, the hardware profile of group 'cameras' (edgefleet:groups[0].hardware.{key})" in text
    assert "local devices take their group's hardware profile" in text


def test_a_batch_that_repeats_its_groups_hardware_is_fine_and_overlapping_groups_must_agree(project):
    p = project(devices=3)
    edit_stack(p, lambda c: c["edgefleet:local"]["devices"][0].update(execution_providers=["CPUExecutionProvider"], arch="amd64"))
    cfg, source = load_stack(p, "local")
    assert len(local_devices(cfg, source)) == 3

    def overlap(c):
        c["edgefleet:groups"].append(
            {
                "name": "gpu",
                "devices": ["cam-0001"],
                "hardware": {
                    "name": "orin",
                    "arch": "arm64",
                    "execution_providers": ["CUDAExecutionProvider"],
                    "memory_mb": 1024,
                    "storage_mb": 4096,
                },
            }
        )

    edit_stack(p, overlap)
    with pytest.raises(ConfigError) as err:  # at load, so `edgefleet plan` and `policy` refuse it too
        load_stack(p, "local")
    assert "edgefleet:groups[1].hardware: device cam-0001 is in groups 'cameras' and 'gpu'" in str(err.value)


# -- edgefleet demo from anywhere --------------------------------------------------------------------------------
def test_demo_finds_the_project_from_any_directory_or_says_how(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert find_project() == ROOT, "outside a project, the demo uses the checkout edgefleet runs from"
    with pytest.raises(EdgefleetError) as err:
        find_project(tmp_path)
    assert str(tmp_path) in str(err.value) and "Pulumi.yaml" in str(err.value) and "--project PATH" in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--project", str(tmp_path)])
    assert exit_.value.code == EXIT_INPUT and "not an edgefleet project" in capsys.readouterr().err


def test_a_second_demo_in_one_workdir_is_refused_before_it_touches_anything(tmp_path):
    work = tmp_path / "demo"
    with exclusive(tmp_path / "demo.lock", "held", "n/a"):
        with pytest.raises(EdgefleetError) as err:
            run_demo(ROOT, work, 10)
    assert "another `edgefleet demo` is running" in str(err.value) and str(tmp_path / "demo.lock") in str(err.value)
    assert not work.exists()
    with pytest.raises(EdgefleetError):
        run_demo(ROOT, ROOT.parent, 10)


def test_the_demo_deletes_only_a_workdir_it_created_or_an_empty_one(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    with pytest.raises(EdgefleetError) as err:
        run_demo(ROOT, home, 10)
    text = " ".join(str(err.value).split())
    assert str(home) in text and "did not create" in text and MARKER in text and "new or empty directory" in text
    assert (home / "notes.txt").read_text() == "keep me" and not (tmp_path / "home.lock").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--workdir", str(home), "--project", str(ROOT)])
    assert exit_.value.code == EXIT_INPUT and "did not create" in capsys.readouterr().err
    assert (home / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    _prepare(ROOT, empty, 10)
    assert (empty / MARKER).is_file() and (empty / "stacks" / "Pulumi.local.yaml").is_file()
    (empty / "leftover").write_text("from the last demo")
    _prepare(ROOT, empty, 10)
    assert not (empty / "leftover").exists(), "a workdir the demo made is recreated"
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(EdgefleetError, match="is a file"):
        run_demo(ROOT, tmp_path / "file", 10)


# -- agent processes stop with their fleet -------------------------------------------------------------------------
def alive(pid: int) -> bool:
    """Running, not a zombie: an orphan's exit is reaped by init, which in a container may never do it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


FLEET_CHILD = """
import sys, time
from pathlib import Path
from components.local.fleet import LocalFleet, local_devices, register
from components.local.hub import LocalHub
from components.local.up import signer_for
from edgefleet.config import load_stack
p = Path(sys.argv[1])
cfg, _ = load_stack(p, "local")
register(LocalHub(p / cfg.local.hub), local_devices(cfg))
fleet = LocalFleet(cfg, p / cfg.local.hub, p / ".edgefleet" / "local" / "devices", signer_for(cfg, p).public_key_pem(),
                   ["detector"], devices=local_devices(cfg))
fleet.start()
print(*[proc.pid for proc in fleet.processes().values()], flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_agent_processes_stop_when_the_fleets_process_is_sigkilled(project):
    p = project(devices=3, processes=1)
    child = subprocess.Popen([sys.executable, "-c", FLEET_CHILD, str(p)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        [agent] = [int(pid) for pid in child.stdout.readline().split()]
        hub = LocalHub(p / ".edgefleet" / "local" / "hub.sqlite")
        deadline = time.time() + 30
        while "cam-0000" not in hub.reports("detector") and time.time() < deadline:
            time.sleep(0.1)
        assert alive(agent) and "cam-0000" in hub.reports("detector"), "the agent process never ran"
    finally:
        child.kill()
        child.wait(10)
    deadline = time.time() + 10
    while alive(agent) and time.time() < deadline:
        time.sleep(0.1)
    if alive(agent):
        os.kill(agent, signal.SIGKILL)
        pytest.fail("the agent process outlived its fleet's SIGKILLed process")


def test_an_agent_restarted_from_a_short_lived_thread_outlives_that_thread(project):
    """Linux sends the parent-death signal when the forking *thread* ends: the demo restarts a killed agent from a timer thread."""
    p = project(devices=3, processes=1)
    cfg, _ = load_stack(p, "local")
    from components.local.up import signer_for

    fleet = LocalFleet(
        cfg,
        p / cfg.local.hub,
        p / ".edgefleet" / "local" / "devices",
        signer_for(cfg, p).public_key_pem(),
        ["detector"],
        devices=local_devices(cfg),
    )
    with fleet:
        [(device, model)] = fleet.processes()
        fleet.kill_process(device, model)
        restart = threading.Thread(target=fleet.start_process, args=(device, model))
        restart.start()
        restart.join()
        time.sleep(1.5)
        proc = fleet.processes()[(device, model)]
        assert proc.poll() is None and alive(proc.pid), "the restarted agent died with the thread that started it"
