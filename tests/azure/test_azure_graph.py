"""The azure-dev stack's declared graph under Pulumi's mocks: every resource, and the security properties a reviewer checks."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from components.azure import mocks
from components.azure.platform import ACR_PUSH, KEY_VAULT_CRYPTO_USER, STORAGE_BLOB_DATA_CONTRIBUTOR

DYN = "pulumi-python:dynamic/edgefleet-azure:"


def of_type(graph, type_):
    return [r for r in graph["resources"] if r["type"] == type_]


def one(graph, type_):
    found = of_type(graph, type_)
    assert len(found) == 1, [r["name"] for r in found]
    return found[0]


def by_name(graph, name):
    return next(r for r in graph["resources"] if r["name"] == name)


def test_the_stack_declares_every_azure_resource(azure_dev_graph):
    counts = Counter(r["type"] for r in azure_dev_graph["resources"])
    assert counts["azure-native:resources:ResourceGroup"] == 1
    assert counts["azure-native:iothub:IotHubResource"] == 1
    assert counts["azure-native:storage:StorageAccount"] == 1
    assert counts["azure-native:storage:BlobServiceProperties"] == 1
    assert counts["azure-native:storage:BlobContainer"] == 2  # models, rollout progress
    assert counts["azure-native:keyvault:Vault"] == 1
    assert counts["azure-native:keyvault:Key"] == 1
    assert counts["azure-native:containerregistry:Registry"] == 1
    assert counts["azure-native:authorization:RoleAssignment"] == 3
    assert counts[DYN + "Configuration"] == 4  # a base per group + a layer per ring (3)
    assert counts[DYN + "RingGate"] == 3
    assert counts[DYN + "ModelArtifact"] == 1 and counts[DYN + "SigningPublicKey"] == 1
    assert not [t for t in counts if "edgefleet-local" in t or t.startswith("aws")]


def test_the_model_store_is_https_only_private_and_versioned(azure_dev_graph):
    account = one(azure_dev_graph, "azure-native:storage:StorageAccount")["inputs"]
    assert account["enableHttpsTrafficOnly"] is True and account["minimumTlsVersion"] == "TLS1_2"
    assert account["allowBlobPublicAccess"] is False and account["allowCrossTenantReplication"] is False
    assert account["defaultToOAuthAuthentication"] is True
    blob = one(azure_dev_graph, "azure-native:storage:BlobServiceProperties")["inputs"]
    assert blob["isVersioningEnabled"] is True and blob["deleteRetentionPolicy"]["enabled"] is True
    assert {c["inputs"]["publicAccess"] for c in of_type(azure_dev_graph, "azure-native:storage:BlobContainer")} == {"None"}


def test_the_signing_key_is_ec_p256_non_exportable_and_kept(azure_dev_graph):
    key = one(azure_dev_graph, "azure-native:keyvault:Key")
    props = key["inputs"]["properties"]
    assert (props["kty"], props["curveName"]) == ("EC", "P-256")
    assert props["attributes"]["exportable"] is False and sorted(props["keyOps"]) == ["sign", "verify"]
    assert key["options"].get("retain_on_delete") is True
    vault = one(azure_dev_graph, "azure-native:keyvault:Vault")
    v = vault["inputs"]["properties"]
    assert v["enableRbacAuthorization"] is True and not v.get("accessPolicies")
    assert v["enablePurgeProtection"] is True and v["enableSoftDelete"] is True
    assert vault["options"].get("retain_on_delete") is True


def test_the_registry_has_no_admin_user_and_devices_may_only_pull_the_agent(azure_dev_graph):
    acr = one(azure_dev_graph, "azure-native:containerregistry:Registry")["inputs"]
    assert acr["adminUserEnabled"] is False and acr["anonymousPullEnabled"] is False
    scope = one(azure_dev_graph, "azure-native:containerregistry:ScopeMap")["inputs"]
    assert sorted(scope["actions"]) == ["repositories/edgefleet-agent/content/read", "repositories/edgefleet-agent/metadata/read"]


def test_the_deploying_identity_gets_exactly_the_data_plane_roles_it_needs(azure_dev_graph):
    assignments = of_type(azure_dev_graph, "azure-native:authorization:RoleAssignment")
    scoped = {}
    for a in assignments:
        role = a["inputs"]["roleDefinitionId"].rsplit("/", 1)[1]
        assert a["inputs"]["principalId"] == mocks.OBJECT and a["inputs"]["principalType"] == "User"
        assert a["inputs"]["roleDefinitionId"].startswith(f"/subscriptions/{mocks.SUBSCRIPTION}/providers/Microsoft.Authorization/")
        (target,) = a["property_dependencies"]["scope"]
        scoped[role] = target.rsplit("::", 1)[1]
    assert scoped == {
        KEY_VAULT_CRYPTO_USER: "azure-signing-vault",
        STORAGE_BLOB_DATA_CONTRIBUTOR: "azure-models-account",
        ACR_PUSH: "azure-apps-acr",
    }


def test_the_hub_has_one_least_privilege_policy_and_its_key_is_secret(azure_dev_graph):
    hub = one(azure_dev_graph, "azure-native:iothub:IotHubResource")["inputs"]
    assert hub["properties"]["authorizationPolicies"] == [
        {"keyName": "edgefleet-deployer", "rights": "RegistryRead, RegistryWrite, ServiceConnect"}
    ]
    assert hub["properties"]["minTlsVersion"] == "1.2" and hub["sku"]["name"] == "S1"
    for r in of_type(azure_dev_graph, DYN + "Configuration") + of_type(azure_dev_graph, DYN + "RingGate"):
        assert r["inputs"]["hub_key"] == "[secret]", r["name"]
    text = json.dumps(azure_dev_graph)
    assert "bW9jay1wcmltYXJ5LWtleQ==" not in text and "sig=mock" not in text  # the mock key and SAS never appear


def test_the_base_deployment_targets_the_group_and_keeps_the_store_sas_out_of_its_content(azure_dev_graph):
    base = by_name(azure_dev_graph, "cameras-base")["inputs"]
    assert base["target_condition"] == "(tags.group='cameras')" and base["priority"] == 10
    assert base["secrets"] == "[secret]"
    twin = base["content"]["modulesContent"]["edgefleet-agent"]["properties.desired"]
    assert twin["store"]["sasToken"] == "${secret:storeSas}"
    agent = base["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert agent["modules"]["edgefleet-agent"]["settings"]["image"].endswith(".azurecr.io/edgefleet-agent:0.1.0")
    assert agent["runtime"]["settings"].get("registryCredentials") is None  # no password configured for this stack


def test_each_ring_is_a_layer_above_the_base_with_disjoint_targets_and_metrics(azure_dev_graph):
    rings = {r: by_name(azure_dev_graph, f"detector-{r}-deployment") for r in ("canary", "early", "broad")}
    for name, r in rings.items():
        i = r["inputs"]
        assert i["priority"] > 10 and i["labels"]["edgefleet-ring"] == f"detector.{name}"
        assert set(i["metrics"]) == {"adopted", "failed", "reporting"}
        assert "tags.group='cameras'" in i["target_condition"]
        mc = i["content"]["modulesContent"]
        assert set(mc) == {"$edgeAgent", "$edgeHub", "edgefleet-agent"}
        assert mc["edgefleet-agent"]["properties.desired.models.detector"]["version"] == "1.0.0"
        base_urn = by_name(azure_dev_graph, "cameras-base")["urn"]
        assert base_urn in r["dependencies"]  # layers need the base deployment
    assert "tags.ring='canary'" in rings["canary"]["inputs"]["target_condition"]
    assert "NOT" in rings["broad"]["inputs"]["target_condition"]


def test_rings_are_chained_through_their_gates(azure_dev_graph):
    early = by_name(azure_dev_graph, "detector-early-deployment")
    broad = by_name(azure_dev_graph, "detector-broad-deployment")
    assert [u.rsplit("::", 1)[1] for u in early["property_dependencies"]["after"]] == ["detector-canary-gate"]
    assert [u.rsplit("::", 1)[1] for u in broad["property_dependencies"]["after"]] == ["detector-early-gate"]
    gate = by_name(azure_dev_graph, "detector-early-gate")
    assert [u.rsplit("::", 1)[1] for u in gate["property_dependencies"]["deployment"]] == ["detector-early-deployment"]
    assert gate["inputs"]["progress_container"] == "rollouts"
    assert gate["inputs"]["key_url"].endswith("/keys/edgefleet-signing/" + "0" * 32)  # pinned key version


def test_children_are_parented_to_their_components(azure_dev_graph):
    parent = {r["name"]: (r["parent"] or "").rsplit("::", 1)[-1] for r in azure_dev_graph["resources"]}
    assert parent["azure-hub"] == parent["azure-rg"] == "azure"
    assert parent["azure-signing-key"] == "azure-signing" and parent["azure-models-account"] == "azure-models"
    assert parent["cameras-base"] == "cameras" and parent["detector-canary-gate"] == "detector-canary"
    assert parent["detector-azure-artifact"] == "detector"


def test_globally_unique_names_are_stable_and_valid(azure_dev_graph):
    import re

    account = one(azure_dev_graph, "azure-native:storage:StorageAccount")["inputs"]["accountName"]
    vault = one(azure_dev_graph, "azure-native:keyvault:Vault")["inputs"]["vaultName"]
    acr = one(azure_dev_graph, "azure-native:containerregistry:Registry")["inputs"]["registryName"]
    hub = one(azure_dev_graph, "azure-native:iothub:IotHubResource")["inputs"]["resourceName"]
    assert re.fullmatch(r"[a-z0-9]{3,24}", account) and re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]", vault)
    assert re.fullmatch(r"[a-zA-Z0-9]{5,50}", acr) and re.fullmatch(r"[a-zA-Z0-9-]{3,50}", hub)
    from components.azure.platform import global_names

    assert global_names(mocks.SUBSCRIPTION, "edgefleet", "azure-dev")["storage"] == account
    assert global_names("another-subscription", "edgefleet", "azure-dev")["storage"] != account


@pytest.mark.parametrize("stack", ["multi"])
def test_the_multi_cloud_stack_declares_both_platforms(stack):
    from pathlib import Path

    from edgefleet.synth import synth

    try:
        graph = synth(Path(__file__).resolve().parents[2], stack)
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("components.aws"):
            pytest.skip(f"the AWS platform is not in this tree yet ({e.name})")
        raise
    types = Counter(r["type"] for r in graph["resources"])
    assert types[DYN + "RingGate"] == 2 and types["azure-native:iothub:IotHubResource"] == 1
    assert any(t.startswith("aws") for t in types)
    groups = {r["name"]: r["inputs"]["platform"] for r in graph["resources"] if r["type"] == "edgefleet:fleet:DeviceGroup"}
    assert groups == {"aws-cameras": "aws", "azure-cameras": "azure"}


def test_every_deployment_pins_the_signing_key_id_in_the_agent_modules_environment(azure_dev_graph):
    """Devices take the public key from the twin only when its id matches this pin, which lives in the
    $edgeAgent deployment, not in the module twin a twin-only writer could change."""
    found = 0
    for r in azure_dev_graph["resources"]:
        content = r["inputs"].get("content")
        if not isinstance(content, dict) or "modulesContent" not in content:
            continue
        agent = content["modulesContent"]["$edgeAgent"]
        module = agent.get("properties.desired", {}).get("modules", {}).get("edgefleet-agent") or agent.get(
            "properties.desired.modules.edgefleet-agent"
        )
        assert module is not None, r["name"]
        assert "EDGEFLEET_TRUSTED_KEY_ID" in module["env"], f"{r['name']} does not pin the trusted key id"
        found += 1
    assert found == 4, "expected the base deployment and three ring layers"
