"""Deployment manifests against the vendor's schemas (as `az iot edge deployment create` applies them) and our twin contract."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
from azure_testkit import matches

from components.azure import manifest as mf
from components.local.signer import LocalKeySigner, create_key_file
from edgefleet_agent.contract.signing import key_id_of, load_public_key, rollback_order, sign_bytes
from edgefleet_agent.contract.state import DesiredModel

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PAIRS = [(a, h) for a in ("1.0", "1.1") for h in ("1.0", "1.1", "1.2")]


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> LocalKeySigner:
    return LocalKeySigner(create_key_file(tmp_path_factory.mktemp("k") / "signing.pem"))


@pytest.fixture(scope="module")
def desired(signer) -> DesiredModel:
    text = (REPO / "models" / "detector" / "model.yaml").read_text()
    sig = sign_bytes(signer, text.encode()).to_bytes().decode()
    return DesiredModel(
        model="detector",
        version="1.0.0",
        sha256="de6313948e98ba28a0087916ca93f9bcb594a0eee60e35670d696b304ed3b7bc",
        size=2364,
        uri="https://efdev.blob.core.windows.net/models/detector/de63.onnx",
        manifest=text,
        signature=sig,
        rollout="detector@1.0.0+de6313948e98",
    )


AGENT = mf.AgentModule(image="efdev.azurecr.io/edgefleet-agent:0.1.0", agent_version="0.1.0")
CANARY = mf.RingDeploymentSpec(
    rollout="detector",
    ring="canary",
    index=0,
    model="detector",
    target_condition="tags.ring='canary'",
    priority=11,
    agent=AGENT,
    agent_schema="1.1",
)


def base(signer, agent_schema="1.1", hub_schema="1.2", **kw):
    trust = {"keyId": signer.key_id, "publicKeyPem": signer.public_key_pem().decode()}
    return mf.base_manifest(
        agent=kw.pop("agent", AGENT),
        runtime="1.5",
        agent_schema=agent_schema,
        hub_schema=hub_schema,
        trust=trust,
        store_sas="sv=2024&sr=c&sp=r&sig=x",
        **kw,
    )


def vendor_errors(edge_schemas, modules_content, draft=None) -> list[str]:
    """What the az CLI does: each system module's part against the schema of the schemaVersion it declares."""
    out = []
    for module in ("$edgeAgent", "$edgeHub"):
        version = modules_content[module]["properties.desired"]["schemaVersion"]
        schema = edge_schemas[(module, version)]
        cls = draft or (jsonschema.Draft7Validator if "draft-07" in schema.get("$schema", "") else jsonschema.Draft4Validator)
        out += [f"{module}: {e.message}" for e in cls(schema).iter_errors({module: modules_content[module]})]
    return out


@pytest.mark.parametrize("agent_schema,hub_schema", SCHEMA_PAIRS)
@pytest.mark.parametrize("draft", [jsonschema.Draft7Validator, None], ids=["draft7", "cli-draft"])
def test_base_and_effective_ring_manifests_validate_for_every_schema_version(
    edge_schemas, signer, desired, agent_schema, hub_schema, draft
):
    b = base(signer, agent_schema, hub_schema)
    layer = mf.ring_layer(agent=AGENT, agent_schema=agent_schema, desired=desired, ring_key="detector.canary")
    effective = mf.effective_manifest(b, layer)
    assert vendor_errors(edge_schemas, b, draft) == []
    assert vendor_errors(edge_schemas, effective, draft) == []
    assert mf.check_manifest(b) == [] and mf.check_manifest(layer) == [] and mf.check_manifest(effective) == []


def test_the_agent_module_carries_image_create_options_restart_policy_and_the_model(signer, desired):
    effective = mf.effective_manifest(
        base(signer), mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=desired, ring_key="detector.canary")
    )
    module = effective["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE]
    assert module["settings"]["image"] == "efdev.azurecr.io/edgefleet-agent:0.1.0"
    assert json.loads(module["settings"]["createOptions"])["HostConfig"]["Binds"] == ["edgefleet-models:/var/lib/edgefleet"]
    assert module["restartPolicy"] == "always" and module["status"] == "running"
    twin = effective[mf.AGENT_MODULE]["properties.desired"]
    model = twin["models"]["detector"]
    assert (model["uri"], model["sha256"], model["version"], model["manifest"], model["signature"]) == (
        desired.uri,
        desired.sha256,
        desired.version,
        desired.manifest,
        desired.signature,
    )
    assert twin["trust"]["publicKeyPem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert twin["trust"]["keyId"] == key_id_of(load_public_key(twin["trust"]["publicKeyPem"].encode(), "twin"))
    assert mf.desired_from_agent(model) == desired  # what the agent reads back is what was signed


def test_the_agent_serves_other_modules_on_the_iot_edge_network_and_no_host_port(signer, edge_schemas):
    """Applications are other modules: they reach the agent by module name on Docker's azure-iot-edge network. A host
    port would put an unauthenticated inference endpoint on the device's LAN."""
    module = base(signer)["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE]
    options = json.loads(module["settings"]["createOptions"])
    assert options["ExposedPorts"] == {"8000/tcp": {}} and "PortBindings" not in options["HostConfig"]
    assert (module["env"]["EDGEFLEET_AGENT_HOST"], module["env"]["EDGEFLEET_AGENT_PORT"]) == ({"value": "0.0.0.0"}, {"value": "8000"})
    from edgefleet_agent.__main__ import parse_command

    env = {k: v["value"] for k, v in module["env"].items()}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**env, "IOTEDGE_DEVICEID": "cam-1"}.items():  # IoT Edge sets the device id in every module
            mp.setenv(k, v)
        args = parse_command(["--transport", "iotedge", "--state-dir", "/var/lib/edgefleet"])
    assert (args.host, args.port) == ("0.0.0.0", 8000), "the agent the module runs must listen where the manifest says"

    exposed = mf.AgentModule(
        image=AGENT.image,
        agent_version="0.1.0",
        create_options={**mf.DEFAULT_CREATE_OPTIONS, "HostConfig": {"PortBindings": {"8000/tcp": [{"HostPort": "8000"}]}}},
    )
    problems = mf.check_manifest(base(signer, agent=exposed))
    assert [p for p in problems if "host port" in str(p)], problems
    assert vendor_errors(edge_schemas, base(signer, agent=exposed)) == [], "the vendor schema allows it: only our check refuses"


def test_layers_use_path_keys_so_iot_hub_classifies_them_as_layered(desired):
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=desired, ring_key="detector.canary")
    for module, parts in layer.items():
        assert all(k.startswith("properties.desired.") for k in parts), module  # never a whole properties.desired
    assert "systemModules" not in json.dumps(layer)  # the runtime is the base deployment's


def test_a_rollback_layer_carries_the_signed_rollback_order(edge_schemas, signer, desired):
    order = rollback_order("detector", "1.0.0", desired.sha256, "gate of ring 'canary' failed", "1.1.0", "cd" * 32)
    rb = DesiredModel(
        **{**desired.__dict__, "rollback_order": order.decode(), "rollback_signature": sign_bytes(signer, order).to_bytes().decode()}
    )
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=rb, ring_key="detector.canary")
    model = layer[mf.AGENT_MODULE]["properties.desired.models.detector"]
    assert model["rollbackOrder"] == order.decode() and model["rollbackSignature"]
    assert mf.check_manifest(layer) == [] and mf.desired_from_agent(model) == rb
    assert vendor_errors(edge_schemas, mf.effective_manifest(base(signer), layer)) == []


def test_a_windowed_rings_layers_pass_the_agent_contract_forward_and_rollback(edge_schemas, signer, desired):
    """A group's maintenance windows ride in every layer of its rings as `maintenanceWindows`; the contract check that
    runs before a layer is sent (and in the stack check) once refused them, so no windowed ring could deploy on Azure."""
    windows = '{"timezone":"Europe/Berlin","windows":[{"cron":"0 2 * * *","minutes":60}]}'
    spec = dataclasses.replace(CANARY, windows=windows)
    order = rollback_order("detector", "1.0.0", desired.sha256, "gate of ring 'canary' failed", "1.1.0", "cd" * 32)
    rb = DesiredModel(
        **{**desired.__dict__, "rollback_order": order.decode(), "rollback_signature": sign_bytes(signer, order).to_bytes().decode()}
    )
    for d in (desired, rb):
        layer = mf.ring_configuration(spec, d)["content"]["modulesContent"]
        assert layer[mf.AGENT_MODULE]["properties.desired.models.detector"]["maintenanceWindows"] == windows
        assert mf.check_manifest(layer) == [] and mf.check_manifest(mf.effective_manifest(base(signer), layer)) == []
        assert vendor_errors(edge_schemas, mf.effective_manifest(base(signer), layer)) == []


@pytest.mark.parametrize(
    "break_it,needle",
    [
        (lambda m: m["$edgeHub"]["properties.desired"].pop("routes"), "routes"),
        (lambda m: m["$edgeAgent"]["properties.desired"]["systemModules"]["edgeHub"].pop("restartPolicy"), "restartPolicy"),
        (
            lambda m: m["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE]["settings"].update(
                createOptions={"HostConfig": {}}
            ),
            "string",
        ),
        (lambda m: m["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE].update(restartPolicy="sometimes"), "sometimes"),
        (lambda m: m["$edgeAgent"]["properties.desired"]["modules"].update({"bad name!": {}}), "bad name!"),
    ],
)
def test_a_broken_manifest_is_rejected_by_the_vendor_schema(edge_schemas, signer, break_it, needle):
    m = base(signer)
    break_it(m)
    errors = vendor_errors(edge_schemas, m)
    assert errors and any(needle in e for e in errors), errors


def test_the_schema_is_the_one_the_manifest_declares(edge_schemas, signer):
    m = base(signer, hub_schema="1.2")
    m["$edgeHub"]["properties.desired"]["routes"][mf.ROUTE] = {"route": mf.route(), "priority": 0}  # 1.1+ allow route objects
    assert vendor_errors(edge_schemas, m) == []
    m["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.0"  # 1.0 wants strings
    assert any("is not of type 'string'" in e for e in vendor_errors(edge_schemas, m))


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("signature", None, "signature"),
        ("sha256", "not-a-digest", "sha256"),
        ("uri", "http://plain-text.example/model.onnx", "uri"),
        ("rollbackOrder", '{"format":"edgefleet-rollback/v1"}', "rollbackSignature"),
    ],
)
def test_broken_agent_desired_properties_are_rejected(signer, desired, field, value, needle):
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=desired, ring_key="detector.canary")
    model = layer[mf.AGENT_MODULE]["properties.desired.models.detector"]
    if value is None:
        model.pop(field)
    else:
        model[field] = value
    problems = mf.check_manifest(layer)
    assert problems and any(needle in p for p in problems), problems


def test_long_create_options_are_split_the_way_iot_edge_reads_them(edge_schemas, signer):
    big = {"HostConfig": {"Binds": [f"/data/{i:04d}:/mnt/{i:04d}" for i in range(60)]}}
    agent = mf.AgentModule(image=AGENT.image, agent_version="0.1.0", create_options=big)
    m = base(signer, agent=agent)
    s = m["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE]["settings"]
    chunks = [s[k] for k in sorted(k for k in s if k.startswith("createOptions"))]
    assert len(chunks) > 1 and all(len(c) <= 512 for c in chunks)
    assert json.loads("".join(chunks)) == big
    assert vendor_errors(edge_schemas, m) == [] and mf.check_manifest(m) == []
    with pytest.raises(ValueError, match="at most 4096"):
        mf.settings("img", {"x": "y" * 5000})


def test_desired_properties_over_the_twin_limit_are_reported(signer, desired):
    fat = DesiredModel(**{**desired.__dict__, "manifest": "#" * (mf.TWIN_DESIRED_LIMIT + 1)})
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=fat, ring_key="detector.canary")
    (problem,) = mf.check_manifest(mf.effective_manifest(base(signer), layer))
    assert "edgefleet-agent: desired properties are" in problem and "at most 32768" in problem
    assert "the 32769-byte model.yaml of detector" in problem and "shorten the largest model.yaml" in problem.fix


def test_twin_size_is_counted_the_way_iot_hub_documents_it():
    doc = {"ab": "x\ny", "n": 3, "f": 0.5, "ok": True, "o": {"é": "ü"}, "$version": 7, "$metadata": {"ab": {"$lastUpdated": "…"}}}
    assert mf.twin_size(doc) == (2 + 2) + (1 + 8) + (1 + 8) + (2 + 4) + (1 + 2 + 2)  # no control characters, no read-only parts


def test_ring_target_conditions_are_disjoint_and_cover_the_group():
    group = (
        {"group": "cameras"},
        [],
    )
    conds = mf.ring_conditions([(*group, {"ring": "canary"}), (*group, {"ring": "early"}), (*group, {})])
    devices = {
        "c1": {"group": "cameras", "ring": "canary"},
        "e1": {"group": "cameras", "ring": "early"},
        "b1": {"group": "cameras"},
        "b2": {"group": "cameras", "ring": "other"},
        "x": {"group": "doorbells"},
        "y": {},
    }
    member = {d: [i for i, c in enumerate(conds) if matches(c, {"deviceId": d, "tags": t})] for d, t in devices.items()}
    assert member == {"c1": [0], "e1": [1], "b1": [2], "b2": [2], "x": [], "y": []}  # b1 has no ring tag: NOT must not drop it


def test_explicit_device_ids_select_like_the_local_registry():
    cond = mf.group_condition({"group": "cameras"}, ["spare-7"])
    assert matches(cond, {"deviceId": "spare-7", "tags": {}})
    assert matches(cond, {"deviceId": "cam-1", "tags": {"group": "cameras"}})
    assert not matches(cond, {"deviceId": "cam-2", "tags": {"group": "doorbells"}})


def test_the_custom_metrics_count_what_the_agent_reports(desired):
    from azure_testkit import run_query

    spec = CANARY
    queries = mf.ring_metrics(spec, desired)
    ok = {"status": "ok", "version": "1.0.0", "sha256": desired.sha256, "ring": spec.key, "rollout": desired.rollout}
    twins = [
        {"deviceId": "a", "moduleId": mf.AGENT_MODULE, "properties": {"reported": {"models": {"detector": ok}}}},
        {
            "deviceId": "b",
            "moduleId": mf.AGENT_MODULE,
            "properties": {
                "reported": {
                    "models": {
                        "detector": {
                            "status": "failed",
                            "failedVersion": "1.0.0",
                            "version": "0.9.0",
                            "ring": spec.key,
                            "rollout": desired.rollout,
                        }
                    }
                }
            },
        },
        {
            "deviceId": "c",
            "moduleId": mf.AGENT_MODULE,
            "properties": {"reported": {"models": {"detector": {**ok, "ring": "detector.early"}}}},
        },
        {"deviceId": "d", "moduleId": mf.AGENT_MODULE, "properties": {"reported": {}}},
    ]
    counts = {name: sorted(r["deviceId"] for r in run_query(q, [], twins)) for name, q in queries.items()}
    assert counts == {"adopted": ["a"], "failed": ["b"], "reporting": ["a", "b"]}


# -- the product's own validation: shipped vendor schemas and IoT Hub's twin limits ------------------------------------
def test_the_shipped_schemas_are_the_published_reference_copies():
    reference = REPO / ".." / "shared" / "reference" / "azure-iot-edge"
    if not reference.is_dir():
        pytest.skip(f"{reference} is not beside this checkout")
    shipped = sorted((REPO / "components" / "azure" / "schemas").glob("*.json"))
    assert [p.name for p in shipped] == sorted(p.name for p in reference.glob("azure-iot-edge*-deployment-*.json"))
    for p in shipped:
        assert p.read_bytes() == (reference / p.name).read_bytes(), p.name


def test_every_manifest_synthesized_for_azure_dev_validates(azure_dev_graph, edge_schemas):
    configs = [
        r["inputs"]["content"]["modulesContent"]
        for r in azure_dev_graph["resources"]
        if r["type"].endswith("edgefleet-azure:Configuration")
    ]
    bases = [mc for mc in configs if "properties.desired" in mc["$edgeAgent"]]
    layers = [mc for mc in configs if "properties.desired" not in mc["$edgeAgent"]]
    assert len(bases) == 1 and len(layers) == 3
    for manifest in [*bases, *(mf.effective_manifest(bases[0], layer) for layer in layers)]:
        assert vendor_errors(edge_schemas, manifest) == []
        assert mf.vendor_problems(manifest) == [] and mf.check_manifest(manifest, contract=False) == []


@pytest.mark.parametrize(
    "field,value,path,message",
    [
        ("restartPolicy", "sometimes", "['restartPolicy']", "'sometimes' is not one of"),
        (
            "settings",
            {"image": AGENT.image, "createOptions": {"HostConfig": {}}},
            "['settings']['createOptions']",
            "is not of type 'string'",
        ),
    ],
)
def test_a_bad_restart_policy_or_create_options_is_refused_naming_schema_path_and_fix(signer, field, value, path, message):
    m = base(signer)
    m["$edgeAgent"]["properties.desired"]["modules"][mf.AGENT_MODULE][field] = value
    problems = mf.check_manifest(m, contract=False)
    where = f"$['$edgeAgent']['properties.desired']['modules']['{mf.AGENT_MODULE}']{path}"
    hit = [p for p in problems if "azure-iot-edgeagent-deployment-1.1.json" in p and where in p and message in p]
    assert hit, problems
    assert "edge_agent_schema" in hit[0].fix


def test_a_schema_version_without_a_vendor_schema_is_refused(signer):
    m = base(signer)
    m["$edgeHub"]["properties.desired"]["schemaVersion"] = "9.9"
    (problem,) = mf.vendor_problems(m)
    assert "$edgeHub" in problem and "'9.9' has no vendor schema" in problem


def entry(layer: dict) -> dict:
    return layer[mf.AGENT_MODULE]["properties.desired.models.detector"]


@pytest.mark.parametrize(
    "text,pieces",
    [
        ("#" * mf.TWIN_STRING_LIMIT, ["#" * mf.TWIN_STRING_LIMIT]),  # exactly 4096 bytes: one string
        ("é" * (mf.TWIN_STRING_LIMIT // 2) + "#", ["é" * (mf.TWIN_STRING_LIMIT // 2), "#"]),  # 4097 bytes: two
        ("#" + "é" * (mf.TWIN_STRING_LIMIT // 2), ["#" + "é" * (mf.TWIN_STRING_LIMIT // 2 - 1), "é"]),  # never cut inside a character
        ("x" * (2 * mf.TWIN_STRING_LIMIT + 1), ["x" * mf.TWIN_STRING_LIMIT] * 2 + ["x"]),
    ],
)
def test_a_manifest_is_chunked_at_4096_utf8_bytes_like_create_options(signer, desired, text, pieces):
    d = DesiredModel(**{**desired.__dict__, "manifest": text})
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=d, ring_key="detector.canary")
    model = entry(layer)
    assert [model[k] for k in mf.chunk_keys("manifest", len(pieces))] == pieces and model["manifestChunks"] == len(pieces)
    assert not [k for k in model if k.startswith("manifest") and k not in (*mf.chunk_keys("manifest", len(pieces)), "manifestChunks")]
    assert all(len(p.encode()) <= mf.TWIN_STRING_LIMIT for p in pieces)
    assert model["signatureChunks"] == 1 and model["signature"] == desired.signature
    assert mf.desired_from_agent(model).manifest.encode() == text.encode()  # the signed bytes, exactly
    effective = mf.effective_manifest(base(signer), layer)
    assert mf.check_manifest(layer) == [] and mf.check_manifest(effective) == []


def test_other_twin_strings_are_still_held_to_iot_hubs_4_kb(signer, desired):
    order = "x" * (mf.TWIN_STRING_LIMIT + 1)
    rb = DesiredModel(**{**desired.__dict__, "rollback_order": order, "rollback_signature": desired.signature})
    (problem,) = mf.check_manifest(mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=rb, ring_key="detector.canary"))
    assert "['properties.desired.models.detector']['rollbackOrder']" in problem and "4097 bytes" in problem and "at most 4096" in problem


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m.pop("manifest01"), "manifest01 is missing (manifestChunks is 3)"),
        (lambda m: m.update(manifest03="tail"), "manifest03 is beyond manifestChunks (3)"),
        (lambda m: m.update(manifestChunks=0), "manifestChunks"),
        (lambda m: m.pop("signatureChunks"), "signatureChunks"),
    ],
)
def test_chunks_that_do_not_match_their_count_are_refused(desired, change, needle):
    d = DesiredModel(**{**desired.__dict__, "manifest": "#" * (2 * mf.TWIN_STRING_LIMIT + 5)})
    layer = mf.ring_layer(agent=AGENT, agent_schema="1.1", desired=d, ring_key="detector.canary")
    change(entry(layer))
    problems = mf.check_manifest(layer)
    assert any(needle in p for p in problems), problems


def test_the_agent_joins_exactly_the_counted_chunks(desired):
    long = DesiredModel(**{**desired.__dict__, "manifest": "a" * mf.TWIN_STRING_LIMIT + "b" * 10})
    model = mf.agent_desired(long, "detector.canary")
    shorter = {**model, **mf.agent_desired(desired, "detector.canary")}  # merged over a longer one: manifest01 lingers
    assert "manifest01" in shorter and mf.desired_from_agent(shorter) == desired
    legacy = {k: v for k, v in mf.agent_desired(desired, "detector.canary").items() if not k.endswith("Chunks")}
    assert mf.desired_from_agent(legacy) == desired  # written before chunking: one string
    with pytest.raises(KeyError, match="manifest01"):
        mf.desired_from_agent({k: v for k, v in model.items() if k != "manifest01"})
    with pytest.raises(ValueError, match="manifestChunks is 'two'"):
        mf.desired_from_agent({**model, "manifestChunks": "two"})
