"""The device's choice of build (edgefleet_agent/variants.py): never one it cannot run, the reference unless a build
made for its accelerator exists, and a device that fits nothing is told which device and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.variants import DeviceFacts, NoVariantFits, choose, this_device, unmet
from tests.variant_entries import variant_entry

DETECTOR = Path(__file__).resolve().parents[2] / "models" / "detector" / "model.yaml"
ARCHES = ["amd64", "arm64", "armv7"]
PROVIDERS = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "XnnpackExecutionProvider"]


def manifest(variants: list[dict], targets: list[dict] | None = None) -> ModelManifest:
    doc = yaml.safe_load(DETECTOR.read_text())
    if targets is not None:
        doc["targets"] = targets
    doc.update(variants=variants, min_agent_version="0.4.0", format=3)
    return ModelManifest.model_validate(doc)


def variant(kind: str, arch: list[str], memory: int, providers: list[str], eps: list[str], drop: float = 0.0) -> dict:
    sha256, size = ("a" * 64, 1000) if kind == "int8" else ("b" * 64, 1500)
    return variant_entry(kind, sha256=sha256, size=size, eps=eps, memory=memory, providers=providers, arch=arch, drop=drop)


variants_st = st.lists(
    st.builds(
        variant,
        kind=st.sampled_from(["int8", "fp16"]),
        arch=st.lists(st.sampled_from(ARCHES), min_size=1, max_size=3, unique=True),
        memory=st.integers(1, 1024),
        providers=st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=2, unique=True),
        eps=st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=2, unique=True),
        drop=st.floats(0, 0.2),
    ),
    max_size=2,
    unique_by=lambda v: v["kind"],
)
targets_st = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b", "c"]),
            "arch": st.sampled_from(ARCHES),
            "execution_providers": st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=2, unique=True),
            "memory_mb": st.integers(1, 1024),
            "storage_mb": st.just(64),
        }
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda t: t["name"],
)
devices_st = st.builds(
    DeviceFacts,
    device_id=st.just("cam-7"),
    arch=st.sampled_from(ARCHES),
    providers=st.lists(st.sampled_from(PROVIDERS), max_size=4, unique=True).map(tuple),
    memory_mb=st.integers(0, 2048),
)


@settings(max_examples=300, deadline=None)
@given(variants=variants_st, targets=targets_st, device=devices_st)
def test_never_a_build_the_device_cannot_run_and_nothing_fitting_is_refused(variants, targets, device):
    m = manifest(variants, targets)
    from edgefleet_agent.variants import builds

    fitting = [b for b in builds(m) if not unmet(b.requires, device)]
    if not fitting:
        with pytest.raises(NoVariantFits) as info:
            choose(m, device)
        assert "device cam-7" in info.value.where and "fits no build of detector 1.0.0" in info.value.problem
        assert info.value.fix and "edgefleet model variant add" in info.value.fix
        return
    chosen = choose(m, device)
    assert not unmet(chosen.requires, device), "never a build whose requirements the device fails"
    accelerated = [
        b
        for b in fitting
        if b.kind != "fp32" and b.execution_providers[0] != "CPUExecutionProvider" and b.execution_providers[0] in device.providers
    ]
    if any(b.kind == "fp32" for b in fitting) and not accelerated:
        assert chosen.kind == "fp32", "the reference when it fits and nothing is built for this device's accelerator"
    if accelerated:
        assert chosen in accelerated and chosen.drop == min(b.drop for b in accelerated)


@settings(max_examples=200, deadline=None)
@given(variants=variants_st, device=devices_st, kind=st.sampled_from(["fp32", "int8", "fp16"]))
def test_an_asked_for_kind_is_given_only_when_the_device_can_run_it(variants, device, kind):
    m = manifest(variants)
    try:
        chosen = choose(m, device, kind)
    except NoVariantFits as exc:
        assert "device cam-7" in exc.where and exc.fix
        assert kind not in m.kinds or "cannot run the" in exc.problem
        return
    assert chosen.kind == kind and not unmet(chosen.requires, device)


def test_a_cuda_device_gets_the_fp16_build_and_a_small_cpu_device_the_int8():
    m = manifest(
        [
            variant("int8", ["amd64", "arm64"], 64, ["CPUExecutionProvider"], ["CPUExecutionProvider"], drop=0.004),
            variant("fp16", ["arm64"], 128, ["CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"], drop=0.0),
        ]
    )
    orin = DeviceFacts("orin-1", "arm64", ("CUDAExecutionProvider", "CPUExecutionProvider"), 512)
    gateway = DeviceFacts("gw-1", "amd64", ("CPUExecutionProvider",), 4096)
    small = DeviceFacts("cam-1", "arm64", ("CPUExecutionProvider",), 96)
    assert choose(m, orin).kind == "fp16"
    assert choose(m, gateway).kind == "fp32", "the reference fits and nothing is built for this device's hardware"
    assert choose(m, small).kind == "int8", "the reference needs 256 MB (the smallest target's memory)"
    with pytest.raises(NoVariantFits) as info:
        choose(m, DeviceFacts("pi-zero", "armv7", ("CPUExecutionProvider",), 64))
    assert str(info.value).startswith("device pi-zero (armv7, 64 MB, CPUExecutionProvider): fits no build of detector 1.0.0")
    assert "fp32: arch armv7 is not one of amd64, arm64" in str(info.value)


def test_this_machine_reports_an_arch_the_manifest_knows_and_its_memory():
    facts = this_device("here", ["CPUExecutionProvider"])
    assert facts.arch in ARCHES and facts.memory_mb > 0


# -- the device installs and serves the build it chose ------------------------------------------------------------------
@pytest.fixture(scope="module")
def with_builds(tmp_path_factory, keys):
    """detector 1.2.0 measured on the committed set, with int8 and fp16 variants, signed: what the fleet publishes."""
    import shutil

    from agent_testkit import MODEL, SAMPLES, TARGET, FakeTransport  # noqa: F401

    from edgefleet.evaluate import evaluate_model
    from edgefleet.model_add import add_version
    from edgefleet.signing import sign_model_dir
    from edgefleet.variant_add import add_variant
    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.contract.state import DesiredModel

    root = tmp_path_factory.mktemp("variants")
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "datasets", root / "datasets")
    model_dir = root / MODEL
    add_version(model_dir, SAMPLES / "detector-1.1.0.onnx", "1.2.0", metrics=[], targets=[TARGET])
    evaluate_model(model_dir, root / "datasets" / "channel-dominance-eval.yaml")
    add_variant(model_dir, "int8")
    add_variant(model_dir, "fp16")
    mdir = ModelDir(model_dir)
    sign_model_dir(mdir, keys.signer)
    m = mdir.load()
    desired = DesiredModel(
        model=MODEL,
        version=m.version,
        sha256=m.sha256,
        size=m.size,
        uri=mdir.artifact_path(m).as_uri(),
        manifest=mdir.manifest_bytes().decode(),
        signature=mdir.signature_path.read_text(),
    )
    return model_dir, m, desired


def copy_of(model_dir: Path, where: Path) -> Path:
    import shutil

    shutil.copytree(model_dir, where / model_dir.name)
    return where / model_dir.name


def test_a_device_downloads_only_the_build_it_chose_verifies_it_and_reports_it(tmp_path, keys, with_builds):
    from dataclasses import replace

    from agent_testkit import MODEL, FakeTransport

    from edgefleet_agent.core import DeviceAgent

    model_dir, m, desired = with_builds
    small = DeviceFacts("cam-3", "amd64", ("CPUExecutionProvider",), 200)  # below the reference's 256 MB
    here = copy_of(model_dir, tmp_path / "store")
    (here / m.file).unlink()  # the reference is not there: a device that fetched it would fail
    wanted = choose(m, small)
    assert wanted.kind == "fp16", "the smaller build that fits where the reference does not"
    transport = FakeTransport(replace(desired, uri=(here / m.file).as_uri()))
    agent = DeviceAgent("cam-3", MODEL, tmp_path / "state", keys.pem, transport, durable=False, device=small)
    assert agent.sync()
    report = agent.build_report()
    assert report.status == "ok", report.error
    assert (report.version, report.sha256, report.variant) == ("1.2.0", m.sha256, wanted.kind)
    assert '"variant": "%s"' % wanted.kind in report.to_json()
    agent.close()

    again = DeviceAgent("cam-3", MODEL, tmp_path / "state", keys.pem, FakeTransport(None), durable=False, device=small)
    again.start()
    assert again.current_variant == wanted.kind, "the slot is re-verified at start against the variant's signed digest"
    again.close()


def test_a_tampered_variant_is_refused_and_never_served(tmp_path, keys, with_builds):
    from dataclasses import replace

    from agent_testkit import MODEL, FakeTransport

    from edgefleet_agent.core import DeviceAgent

    model_dir, m, desired = with_builds
    here = copy_of(model_dir, tmp_path / "store")
    (here / "detector.int8.onnx").write_bytes((here / "detector.int8.onnx").read_bytes()[:-1] + b"\0")
    transport = FakeTransport(replace(desired, uri=(here / m.file).as_uri()))
    big = DeviceFacts("gw-9", "amd64", ("CPUExecutionProvider",), 4096)
    agent = DeviceAgent("gw-9", MODEL, tmp_path / "state", keys.pem, transport, durable=False, device=big, variant="int8")
    agent.sync()
    report = agent.build_report()
    assert report.status == "failed" and report.version is None and report.variant is None
    assert "sha256 mismatch: the downloaded int8 variant has sha256" in (report.error or "")
    agent.close()


def test_a_device_that_fits_no_build_reports_which_device_and_the_fix(tmp_path, keys, with_builds):
    from agent_testkit import MODEL, FakeTransport

    from edgefleet_agent.core import DeviceAgent

    _, _, desired = with_builds
    pi = DeviceFacts("pi-zero-4", "armv7", ("CPUExecutionProvider",), 64)
    agent = DeviceAgent("pi-zero-4", MODEL, tmp_path / "state", keys.pem, FakeTransport(desired), durable=False, device=pi)
    agent.sync()
    report = agent.build_report()
    assert report.status == "failed" and report.version is None
    assert "device pi-zero-4 (armv7, 64 MB, CPUExecutionProvider): fits no build of detector 1.2.0" in (report.error or "")
    assert "edgefleet model variant add" in (report.error or "")
    agent.close()


def test_serve_serves_the_asked_for_variant_and_refuses_one_the_manifest_lacks(keys, with_builds):
    import subprocess
    import sys

    model_dir, _, _ = with_builds
    repo = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "agent", "serve", "--model-dir", str(model_dir), "--public-key", str(keys.pem_path), "--port", "0"]
    proc = subprocess.Popen([*args, "--variant", "int8"], cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        for _ in range(200):
            line = proc.stderr.readline()
            if "serving detector" in line and " at http" in line or not line:
                break
        assert "serving detector 1.2.0 at http://" in line and "(build int8;" in line, line
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()
    (model_dir / "detector.fp16.onnx").rename(model_dir / "gone.onnx")
    try:
        done = subprocess.run([*args, "--variant", "fp16"], cwd=repo, capture_output=True, text=True, timeout=60)
    finally:
        (model_dir / "gone.onnx").rename(model_dir / "detector.fp16.onnx")
    assert done.returncode == 3 and "fp16 variant does not match the signed manifest" in done.stderr, done.stderr
    done = subprocess.run([*args, "--variant", "int4"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "has no int4 variant (it has fp32, int8, fp16)" in done.stderr, done.stderr


def test_a_desired_state_that_lists_variants_is_fetched_from_there_as_an_azure_twin_carries_it(tmp_path, keys, with_builds):
    """Azure's twin lists each build's blob (content-addressed, not beside the reference under its file name): the device
    chooses with `choose`, fetches the listed URI of that build only, and verifies it against the signed manifest; a
    listing whose digest is not the signed one is refused before anything is fetched."""
    import shutil
    from dataclasses import replace

    from agent_testkit import MODEL, FakeTransport

    from edgefleet_agent.contract.iotedge import agent_desired, desired_from_agent
    from edgefleet_agent.core import DeviceAgent

    model_dir, m, desired = with_builds
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    listed = []
    for v in m.variants:
        shutil.copy(model_dir / v.file, blobs / f"{v.sha256}.onnx")
        listed.append({"kind": v.kind, "uri": (blobs / f"{v.sha256}.onnx").as_uri(), "sha256": v.sha256, "size": v.size})
    twin = agent_desired(replace(desired, uri=(blobs / f"{m.sha256}.onnx").as_uri(), variants=listed), "detector.canary")
    from_twin = desired_from_agent(twin)
    assert from_twin.format == 3 and {v["kind"] for v in from_twin.variants or []} == {v.kind for v in m.variants}

    small = DeviceFacts("cam-7", "amd64", ("CPUExecutionProvider",), 200)
    wanted = choose(m, small)
    agent = DeviceAgent("cam-7", MODEL, tmp_path / "state", keys.pem, FakeTransport(from_twin), durable=False, device=small)
    assert agent.sync()
    report = agent.build_report()
    assert report.status == "ok", report.error
    assert report.variant == wanted.kind != "fp32"
    agent.close()

    wrong = replace(from_twin, variants=[{**v, "sha256": "0" * 64} for v in listed])
    agent = DeviceAgent("cam-8", MODEL, tmp_path / "state2", keys.pem, FakeTransport(wrong), durable=False, device=small)
    agent.sync()
    report = agent.build_report()
    assert report.status == "failed" and report.version is None
    assert f"the desired state lists the {wanted.kind} variant with sha256 {'0' * 64}" in (report.error or "")
    agent.close()


def test_the_local_store_publishes_each_build_under_its_digest_and_the_desired_state_lists_them(tmp_path, keys, with_builds):
    """`edgefleet up` and the local platform publish every build content-addressed beside the reference, so a later
    version's int8 never replaces an earlier one's (a rollback finds its own), and the hub's desired state lists them."""
    from agent_testkit import MODEL, FakeTransport

    from components.local.store import publish
    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.contract.state import DesiredModel
    from edgefleet_agent.core import DeviceAgent

    model_dir, m, _ = with_builds
    published = publish(
        tmp_path / "store", ModelDir(model_dir).manifest_bytes().decode(), model_dir / m.file, keys.signer, "models/detector"
    )
    desired = DesiredModel.from_json(published.desired("").to_json())  # as the local hub stores and hands it out
    assert desired is not None and desired.format == 3
    assert sorted(v["kind"] for v in desired.variants or []) == sorted(v.kind for v in m.variants)
    for v in m.variants:
        assert (tmp_path / "store" / MODEL / f"{v.sha256}.onnx").read_bytes() == (model_dir / v.file).read_bytes()
    small = DeviceFacts("cam-5", "amd64", ("CPUExecutionProvider",), 200)
    (tmp_path / "store" / MODEL / f"{m.sha256}.onnx").unlink()  # only the chosen build is fetched
    agent = DeviceAgent("cam-5", MODEL, tmp_path / "state", keys.pem, FakeTransport(desired), durable=False, device=small)
    assert agent.sync()
    report = agent.build_report()
    assert report.status == "ok" and report.variant == choose(m, small).kind, report.error
    agent.close()
