"""A version with variants on Greengrass: the nucleus downloads component artifacts itself, so the recipe chooses the
build through manifests keyed on platform attributes (most specific first: the nucleus takes the first match), each
profile's manifest carrying only the build the agent would choose on that hardware; recipes validate against the
vendored GDK schema; the Startup script hands the build over where the agent looks for it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from aws_testkit import PROJECT

from components.aws.recipes import HARDWARE_ATTRIBUTE, model_recipe
from components.aws.recipes import recipe_errors as gdk_errors
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import HardwareProfile, ModelManifest
from edgefleet_agent.variants import DeviceFacts, choose
from tests.variant_entries import variant_entry

AGENT = "edgefleet.dev.Agent"
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
JETSON = HardwareProfile(name="jetson-orin", arch="arm64", execution_providers=[CUDA, CPU], memory_mb=8192, storage_mb=4096)
SMALL = HardwareProfile(name="small-cam", arch="amd64", execution_providers=[CPU], memory_mb=128, storage_mb=512)
BIG = HardwareProfile(name="x86-camera", arch="amd64", execution_providers=[CPU], memory_mb=1024, storage_mb=4096)
TINY = HardwareProfile(name="tiny", arch="amd64", execution_providers=[CPU], memory_mb=16, storage_mb=64)


def variant(kind: str, digit: str, memory: int, eps: list[str], providers: list[str]) -> dict:
    return variant_entry(kind, sha256=digit * 64, size=1000, eps=eps, memory=memory, providers=providers)


def with_variants() -> tuple[ModelManifest, str]:
    doc = yaml.safe_load((PROJECT / "models" / "detector" / "model.yaml").read_text())
    doc.update(
        variants=[variant("int8", "a", 64, [CPU], [CPU]), variant("fp16", "b", 256, [CUDA, CPU], [CUDA])],
        min_agent_version="0.4.0",
        format=3,
    )
    return ModelManifest.model_validate(doc), yaml.safe_dump(doc)


URIS = {"int8": "s3://b/models/detector/" + "a" * 64 + ".onnx", "fp16": "s3://b/models/detector/" + "b" * 64 + ".onnx"}


def recipe(hardware=(JETSON, SMALL, BIG, TINY)):
    manifest, text = with_variants()
    return manifest, model_recipe(
        "edgefleet.dev.detector.Model",
        manifest,
        text,
        "{}",
        f"s3://b/models/detector/{manifest.sha256}.onnx",
        AGENT,
        "0.4.0",
        URIS,
        hardware,
    )


def test_one_manifest_per_hardware_profile_with_only_its_build_first_then_one_per_architecture():
    manifest, r = recipe()
    assert gdk_errors(r) == []
    names = [m["Name"] for m in r["Manifests"]]
    assert names == [
        "linux-aarch64-jetson-orin-fp16",
        "linux-amd64-small-cam-int8",
        "linux-amd64-x86-camera-fp32",
        "linux-aarch64",
        "linux-amd64",
    ]
    keyed = r["Manifests"][:3]
    for m, hw in zip(keyed, (JETSON, SMALL, BIG), strict=True):
        assert m["Platform"] == {"os": "linux", "architecture": m["Platform"]["architecture"], HARDWARE_ATTRIBUTE: hw.name}
        kind = choose(manifest, DeviceFacts(hw.name, hw.arch, tuple(hw.execution_providers), hw.memory_mb)).kind
        assert m["Name"].endswith(kind), "the recipe's choice is the agent's own"
        (artifact,) = m["Artifacts"]
        want = URIS.get(kind, f"s3://b/models/detector/{manifest.sha256}.onnx")
        assert artifact["URI"] == want, "only that build is downloaded"
    assert all(len(m["Platform"]) == 2 for m in r["Manifests"][3:]), "the fallbacks are the least specific, so last"
    assert len(r["Manifests"][4]["Artifacts"]) == 3, "a device that declares no profile gets every build its arch runs"
    assert "tiny" not in " ".join(names), "a profile that fits no build gets no manifest of its own"


def test_a_version_without_variants_keeps_its_recipe_and_a_missing_variant_uri_is_an_error():
    manifest, text = with_variants()
    plain = manifest.model_copy(update={"variants": [], "format": 2})
    r = model_recipe("edgefleet.dev.detector.Model", plain, text, "{}", "s3://b/k.onnx", AGENT, "0.4.0", None, [JETSON])
    assert [m["Name"] for m in r["Manifests"]] == ["linux-aarch64", "linux-amd64"]
    with pytest.raises(EdgefleetError, match="fp16 with no published artifact URI"):
        model_recipe("edgefleet.dev.detector.Model", manifest, text, "{}", "s3://b/k.onnx", AGENT, "0.4.0", {"int8": URIS["int8"]}, [])


def test_the_startup_script_hands_the_chosen_build_over_where_the_agent_looks_for_it(tmp_path: Path):
    """The small camera's manifest: the nucleus downloaded the int8 build as <its sha256>.onnx; Startup puts it beside
    the reference's name as the manifest's file name (core.variant_uri), commits the desired state, and exits 0 on the
    agent's verdict. A later version's build replaces the earlier one's (variant names are not content-addressed)."""
    _, r = recipe()
    script = r["Manifests"][1]["Lifecycle"]["Startup"]["Script"]
    downloads, work = tmp_path / "artifacts", tmp_path / "work"
    downloads.mkdir()
    (downloads / ("a" * 64 + ".onnx")).write_bytes(b"int8 build")
    script = script.replace("{artifacts:path}", str(downloads)).replace(f"{{{AGENT}:work:path}}", str(work))
    handoff = work / "_greengrass" / "models" / "detector"
    (handoff / "artifacts").mkdir(parents=True)
    (handoff / "artifacts" / "detector.int8.onnx").write_bytes(b"an older version's int8 build")
    env = {**os.environ, **{var: "x" for var in r["Manifests"][1]["Lifecycle"]["Setenv"]}}
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (handoff / "current").is_file():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        serial = (handoff / (handoff / "current").read_text().strip() / "serial").read_text().strip()
        (handoff / "verdict").write_text(f"serial={serial}\nstatus=installed\nversion=1.0.0\n")
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (handoff / "artifacts" / "detector.int8.onnx").read_bytes() == b"int8 build"
    assert not any(p.name.endswith(".onnx") and p.name != "detector.int8.onnx" for p in (handoff / "artifacts").iterdir())
