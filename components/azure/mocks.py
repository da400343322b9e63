"""What Azure computes for the resources and invokes the Azure platform uses, as `edgefleet synth` shows it.

Deterministic stand-ins (names, hostnames, endpoints follow Azure's formats); values only a deployment can
produce (a Key Vault public key, a signature, a configuration's id) are marked as such. Never a real credential.
"""

from __future__ import annotations

from typing import Any

COMPUTED = "[computed at deploy]"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
TENANT = "00000000-0000-0000-0000-0000000000aa"
OBJECT = "00000000-0000-0000-0000-0000000000bb"
DYNAMIC = "pulumi-python:dynamic/edgefleet-azure:"


def _resource_computed(kind: str, inputs: dict[str, Any]) -> dict[str, Any] | None:
    if kind == "azure-native:resources:ResourceGroup":
        return {"name": inputs.get("resourceGroupName")}
    if kind == "azure-native:iothub:IotHubResource":
        name = inputs.get("resourceName")
        return {"name": name, "properties": {**(inputs.get("properties") or {}), "hostName": f"{name}.azure-devices.net"}}
    if kind == "azure-native:storage:StorageAccount":
        name = inputs.get("accountName")
        return {"name": name, "primaryEndpoints": {"blob": f"https://{name}.blob.core.windows.net/"}}
    if kind == "azure-native:storage:BlobContainer":
        return {"name": inputs.get("containerName")}
    if kind == "azure-native:keyvault:Vault":
        name = inputs.get("vaultName")
        return {"name": name, "properties": {**(inputs.get("properties") or {}), "vaultUri": f"https://{name}.vault.azure.net/"}}
    if kind == "azure-native:keyvault:Key":
        vault, name = inputs.get("vaultName"), inputs.get("keyName")
        uri = f"https://{vault}.vault.azure.net/keys/{name}"
        return {"name": name, "keyUri": uri, "keyUriWithVersion": f"{uri}/{'0' * 32}"}
    if kind == "azure-native:containerregistry:Registry":
        name = inputs.get("registryName")
        return {"name": name, "loginServer": f"{name}.azurecr.io"}
    if kind in ("azure-native:containerregistry:ScopeMap", "azure-native:containerregistry:Token"):
        return {"name": inputs.get("scopeMapName") or inputs.get("tokenName")}
    return None


def computed(type_: str, name: str, inputs: dict[str, Any], region: str) -> dict[str, Any] | None:
    if not type_.startswith(DYNAMIC):
        return _resource_computed(type_, inputs)
    kind = type_.removeprefix(DYNAMIC)
    if kind == "ModelArtifact":
        endpoint = str(inputs.get("blob_endpoint", "")).rstrip("/")
        return {"uri": f"{endpoint}/{inputs.get('container')}/{inputs.get('model')}/{inputs.get('sha256')}.onnx", "signature": COMPUTED}
    return {
        "SigningPublicKey": {"key_id": COMPUTED, "public_key_pem": COMPUTED},
        "Configuration": {"config_id": COMPUTED, "etag": COMPUTED, "created_time": COMPUTED},
        "RingGate": {"gate": f"{inputs.get('rollout')}:{inputs.get('ring')}:{COMPUTED}", "measured": COMPUTED},
    }.get(kind)


def call(token: str, args: dict[str, Any], region: str) -> dict[str, Any] | None:
    if token == "azure-native:authorization:getClientConfig":
        return {"clientId": "00000000-0000-0000-0000-0000000000cc", "objectId": OBJECT, "subscriptionId": SUBSCRIPTION, "tenantId": TENANT}
    if token == "azure-native:iothub:listIotHubResourceKeysForKeyName":
        return {
            "keyName": args.get("keyName"),
            "primaryKey": "bW9jay1wcmltYXJ5LWtleQ==",
            "secondaryKey": "bW9jay1zZWNvbmRhcnkta2V5",
            "rights": "RegistryRead, RegistryWrite, ServiceConnect",
        }
    if token == "azure-native:storage:listStorageAccountServiceSAS":
        return {"serviceSasToken": "sv=mock&sr=c&sp=r&spr=https&sig=mock"}
    return None
