"""Variants on Azure: the stack publishes each build as a content-addressed blob beside the reference, the ring's layer
lists them in the agent module twin (`variants`, keyed by kind: twins hold no arrays) under the vendor's and our own
schemas, and the desired state the agent reads back lists them as written (format 3: older agents refuse it)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml
from test_azure_gate import MemoryContainer
from test_azure_manifest import AGENT, base, vendor_errors

from components.azure import manifest as mf
from components.azure.providers import publish_artifact
from components.local.signer import LocalKeySigner, create_key_file
from edgefleet_agent.contract.errors import EdgefleetError, FormatError
from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.contract.signing import sign_bytes
from edgefleet_agent.contract.state import DesiredModel, _known_fields
from tests.variant_entries import variant_entry

REPO = Path(__file__).resolve().parents[2]
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path_factory.mktemp("k") / "signing.pem"))


def model_with_variants(where: Path) -> tuple[Path, ModelManifest, str]:
    """models/detector with an int8 and an fp16 build beside it (stand-in bytes, pinned by their digests)."""
    shutil.copytree(REPO / "models" / "detector", where / "detector")
    d = where / "detector"
    doc = yaml.safe_load((d / "model.yaml").read_text())
    variants = []
    for kind in ("int8", "fp16"):
        data = f"{kind} build of detector".encode()
        (d / f"detector.{kind}.onnx").write_bytes(data)
        variants.append(variant_entry(kind, sha256=hashlib.sha256(data).hexdigest(), size=len(data), eps=[CPU], memory=64, providers=[CPU]))
    doc.update(variants=variants, min_agent_version="0.4.0", format=3)
    text = yaml.safe_dump(doc, sort_keys=False)
    (d / "model.yaml").write_text(text)
    return d, ModelManifest.model_validate(doc), text


def props(d: Path, m: ModelManifest, text: str) -> dict:
    return {
        "source": str(d / m.file),
        "model": m.name,
        "version": m.version,
        "sha256": m.sha256,
        "size": m.size,
        "manifest": text,
        "blob_endpoint": "https://efdev.blob.core.windows.net/",
        "container": "models",
        "key_url": "unused",
    }


def test_each_variant_is_published_once_content_addressed_where_the_desired_state_points(signer, tmp_path):
    d, m, text = model_with_variants(tmp_path)
    box = MemoryContainer()
    out = publish_artifact(props(d, m, text), signer=signer, container=box)
    listed = mf.desired_variants(m, out["uri"])
    assert [v["kind"] for v in listed] == ["fp16", "int8"]
    for v in listed:
        name = v["uri"].removeprefix("https://efdev.blob.core.windows.net/models/")
        assert name == f"detector/{v['sha256']}.onnx"
        assert hashlib.sha256(box.blobs[name][0]).hexdigest() == v["sha256"]
    uploads = len(box.uploads)
    publish_artifact(props(d, m, text), signer=signer, container=box)
    assert len(box.uploads) == uploads, "a re-run uploads nothing again"


def test_a_variant_that_does_not_match_its_pin_is_not_published(signer, tmp_path):
    d, m, text = model_with_variants(tmp_path)
    (d / "detector.int8.onnx").write_bytes(b"something else")
    box = MemoryContainer()
    with pytest.raises(EdgefleetError, match="refusing to publish the int8 variant"):
        publish_artifact(props(d, m, text), signer=signer, container=box)
    assert not any(m.variant("int8").sha256 in name for name in box.blobs)


def test_the_ring_layer_lists_the_variants_in_the_twin_and_the_agent_reads_them_back(edge_schemas, signer, tmp_path):
    _, m, text = model_with_variants(tmp_path)
    uri = f"https://efdev.blob.core.windows.net/models/detector/{m.sha256}.onnx"
    desired = DesiredModel(
        model="detector",
        version=m.version,
        sha256=m.sha256,
        size=m.size,
        uri=uri,
        manifest=text,
        signature=sign_bytes(signer, text.encode()).to_bytes().decode(),
        rollout="detector@1.0.0+de6313948e98",
        variants=mf.desired_variants(m, uri),
    )
    assert desired.format == 3
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=desired, ring_key="detector.canary")
    entry = layer[mf.AGENT_MODULE]["properties.desired.models.detector"]
    assert set(entry["variants"]) == {"int8", "fp16"} and "kind" not in entry["variants"]["int8"]
    assert mf.check_manifest(layer) == []
    assert vendor_errors(edge_schemas, mf.effective_manifest(base(signer), layer)) == []
    assert mf.desired_from_agent(entry) == desired
    assert desired.variant_uri("int8") == (
        f"https://efdev.blob.core.windows.net/models/detector/{m.variant('int8').sha256}.onnx",
        m.variant("int8").sha256,
    )

    entry["variants"]["int8"]["uri"] = "http://plain.example/x.onnx"
    assert any("variants" in p and "uri" in p for p in mf.check_manifest(layer))


def test_an_agent_that_reads_format_2_refuses_a_desired_state_with_variants_by_number():
    body = {"model": "detector", "version": "1.0.0", "sha256": "a" * 64, "size": 1, "uri": "u", "manifest": "m", "signature": "s"}
    with_variants = DesiredModel(**body, variants=[{"kind": "int8", "uri": "u2", "sha256": "b" * 64, "size": 1}])
    import json

    doc = json.loads(with_variants.to_json())
    assert doc["format"] == 3
    with pytest.raises(FormatError, match="format 3, newer than the 2 this agent reads"):
        _known_fields(DesiredModel, doc, "desired state", 2)
    assert "variants" not in DesiredModel(**body).to_json(), "a desired state without variants is written as before"
    assert DesiredModel.from_json(with_variants.to_json()) == with_variants


def test_the_ring_gate_declares_the_same_variants_the_rings_configuration_writes(tmp_path):
    """The gate compares the ring's configuration with what it declares and sets it again on a retry: both must list
    the variants, or the gate would take its own ring for another version and write the variants away."""
    from components.azure.hub import AzureRingGateProps

    _, m, text = model_with_variants(tmp_path)
    uri = f"https://efdev.blob.core.windows.net/models/detector/{m.sha256}.onnx"
    p = AzureRingGateProps.model_construct(
        model="detector", version=m.version, sha256=m.sha256, size=m.size, manifest=text, uri=uri, signature="s"
    )
    assert p.declared().variants == mf.desired_variants(m, uri) and p.declared().format == 3
    reference = (REPO / "models" / "detector" / "model.yaml").read_text()
    plain = AzureRingGateProps.model_construct(
        model="detector", version="1.0.0", sha256="a" * 64, size=1, manifest=reference, uri=uri, signature="s"
    )
    assert plain.declared().variants is None
