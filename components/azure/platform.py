"""The Azure platform: IoT Hub, a Blob Storage model store, a Key Vault signing key, ACR for the agent image, and
IoT Edge deployments (a base deployment per device group, a layered deployment and a gate per ring).

Resources ARM knows are pulumi-azure-native resources; IoT Hub configurations and everything that needs the
data plane (reading the key's public half, publishing a signed model, running a gate) are dynamic providers.
The resource group and the hub are shared by every component, so they live in one `edgefleet:azure:Foundation`
component created on first use. Globally unique names (hub, storage account, vault, registry) derive from the
subscription, project and stack, so two stacks never collide and one stack always gets the same names.

Access: the identity running `pulumi up` gets exactly the data-plane roles the providers need (Key Vault Crypto
User on the vault, Storage Blob Data Contributor on the store, AcrPush on the registry). The hub gets one shared
access policy, `edgefleet-deployer`, whose key reaches the providers as a secret input.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_azure_native as azure

from components.azure import manifest as mf
from components.azure.checks import check_azure_manifests
from components.azure.config import AzureConfig
from components.azure.configurations import Configuration
from components.azure.providers import ModelArtifact, RingGate, SigningPublicKey
from components.platform import (
    GroupOutputs,
    KeyOutputs,
    Platform,
    PublishOutputs,
    RegistryOutputs,
    RingOutputs,
    RingSpec,
    StackBase,
    StoreOutputs,
    child,
    read_after,
    ring_gate_timeout,
)
from components.rollout.engine import rollout_id
from components.rollout.spec import DeviceGroupConfig
from components.stack import PROJECT, raise_first
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.contract.state import DesiredModel

HUB_POLICY = "edgefleet-deployer"
HUB_POLICY_RIGHTS = "RegistryRead, RegistryWrite, ServiceConnect"  # configurations (registry) and twin queries (service)
MODELS_CONTAINER = "models"
PROGRESS_CONTAINER = "rollouts"
SIGNING_KEY_NAME = "edgefleet-signing"
DEVICE_TOKEN = "edgefleet-devices"
# Built-in role definition ids (the same in every tenant).
KEY_VAULT_CRYPTO_USER = "12338af0-0e69-4776-bea7-57ae8d297424"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
ACR_PUSH = "8311e382-0749-4cb8-b61a-304f252e45ec"


def global_names(subscription_id: str, project: str, stack: str) -> dict[str, str]:
    """Names for the resources with a DNS name. Deterministic per (subscription, project, stack)."""
    h = hashlib.sha256(f"{subscription_id}/{project}/{stack}".encode()).hexdigest()[:8]
    s = re.sub(r"[^a-z0-9]", "", stack.lower())[:8] or "stack"
    return {"hub": f"ef-{s}-{h}", "storage": f"ef{s}{h}", "vault": f"ef-{s}-{h}", "registry": f"ef{s}{h}"}


def role_definition(subscription_id: pulumi.Input[str], role: str) -> pulumi.Output[str]:
    return pulumi.Output.concat("/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role)


class Foundation(pulumi.ComponentResource):
    """The resource group and IoT Hub every Azure component of the stack shares."""

    def __init__(self, name: str, cfg: AzureConfig, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("edgefleet:azure:Foundation", name, {"location": cfg.location}, opts)
        stack, project = pulumi.get_stack(), pulumi.get_project()
        self.client = azure.authorization.get_client_config_output()
        self.names = self.client.subscription_id.apply(lambda sub: global_names(sub, project, stack))
        self.tags = {"edgefleet-stack": stack, "edgefleet-project": project}
        self.location = cfg.location
        self.principal_type = cfg.deployer_principal_type
        self.rg = azure.resources.ResourceGroup(
            f"{name}-rg",
            resource_group_name=cfg.resource_group or f"rg-{project}-{stack}",
            location=cfg.location,
            tags=self.tags,
            opts=child(self),
        )
        self.hub = azure.iothub.IotHubResource(
            f"{name}-hub",
            resource_name_=self.names.apply(lambda n: n["hub"]),
            resource_group_name=self.rg.name,
            location=cfg.location,
            sku={"name": cfg.iot_hub_sku, "capacity": cfg.iot_hub_units},
            properties={
                # Only the policy the providers use: no iothubowner; operators use Entra ID (az ... --auth-type login).
                "authorization_policies": [{"key_name": HUB_POLICY, "rights": HUB_POLICY_RIGHTS}],
                "min_tls_version": "1.2",
                "public_network_access": "Enabled",
            },
            tags=self.tags,
            opts=child(self),
        )
        self.hub_host = self.hub.properties.apply(lambda p: p.host_name)
        keys = azure.iothub.list_iot_hub_resource_keys_for_key_name_output(
            key_name=HUB_POLICY,
            resource_name=self.hub.name,
            resource_group_name=self.rg.name,
            opts=pulumi.InvokeOutputOptions(depends_on=[self.hub, self.rg]),
        )
        self.hub_key = pulumi.Output.secret(read_after(keys.primary_key, self.hub, self.rg))
        self.register_outputs({"resourceGroup": self.rg.name, "hubHostName": self.hub_host, "hubPolicy": HUB_POLICY})

    def hub_access(self) -> dict[str, Any]:
        return {"hub_host": self.hub_host, "key_name": HUB_POLICY, "hub_key": self.hub_key}

    def grant(self, name: str, parent: pulumi.Resource, scope: pulumi.Output[str], role: str) -> azure.authorization.RoleAssignment:
        """The deploying identity gets `role` on `scope`; the assignment's name is a stable GUID of the three."""
        name_guid = pulumi.Output.all(scope, self.client.object_id).apply(
            lambda v: str(uuid.uuid5(uuid.NAMESPACE_URL, f"{v[0]}|{role}|{v[1]}"))
        )
        return azure.authorization.RoleAssignment(
            name,
            role_assignment_name=name_guid,
            principal_id=self.client.object_id,
            role_definition_id=role_definition(self.client.subscription_id, role),
            scope=scope,
            principal_type=self.principal_type,
            description=f"edgefleet: the deploying identity ({pulumi.get_stack()})",
            opts=child(parent),
        )


@dataclass
class _Store:
    account: azure.storage.StorageAccount
    blob_endpoint: pulumi.Output[str]
    device_sas: pulumi.Output[str]
    access: azure.authorization.RoleAssignment


@dataclass
class _Key:
    key: azure.keyvault.Key
    key_url: pulumi.Output[str]
    public: SigningPublicKey


@dataclass
class _Base:
    """A device group's base deployment and its content, which every ring's layer is checked on top of."""

    configuration: Configuration
    content: pulumi.Output[dict]


class AzurePlatform(Platform):
    name = "azure"

    def __init__(self, stack, project_dir: Path) -> None:
        super().__init__(stack, project_dir)
        self.source = f"stacks/Pulumi.{pulumi.get_stack()}.yaml"
        self.az: AzureConfig = stack.azure  # parse_stack_config ran checks.check_stack already
        password = pulumi.Config(f"{PROJECT}-azure").get_secret("registryPassword") is not None
        raise_first(check_azure_manifests(stack, self.project_dir, registry_password=password), self.source)
        self._foundation: Foundation | None = None

    @property
    def foundation(self) -> Foundation:
        """The stack's resource group, IoT Hub and identity, declared with whichever part of the stack comes first."""
        if self._foundation is None:
            self._foundation = Foundation("azure", self.az)
        return self._foundation

    # -- store ------------------------------------------------------------------------------------------------
    def model_store(self, parent) -> StoreOutputs:
        f = self.foundation
        name = parent.resource_name
        account = azure.storage.StorageAccount(
            f"{name}-account",
            account_name=f.names.apply(lambda n: n["storage"]),
            resource_group_name=f.rg.name,
            location=self.az.location,
            kind="StorageV2",
            sku={"name": self.az.storage_sku},
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            allow_blob_public_access=False,
            # Shared keys stay enabled only so ARM can mint the devices' read-only service SAS (listServiceSas);
            # people and the providers use Entra ID (default_to_o_auth_authentication), never the account key.
            allow_shared_key_access=True,
            default_to_o_auth_authentication=True,
            allow_cross_tenant_replication=False,
            public_network_access="Enabled",
            tags=f.tags,
            opts=child(parent),
        )
        blob = azure.storage.BlobServiceProperties(
            f"{name}-blob",
            account_name=account.name,
            resource_group_name=f.rg.name,
            blob_services_name="default",
            is_versioning_enabled=True,
            delete_retention_policy={"enabled": True, "days": 30},
            container_delete_retention_policy={"enabled": True, "days": 30},
            opts=child(parent),
        )
        for container in (MODELS_CONTAINER, PROGRESS_CONTAINER):
            azure.storage.BlobContainer(
                f"{name}-{container}",
                container_name=container,
                account_name=account.name,
                resource_group_name=f.rg.name,
                public_access="None",
                opts=child(parent, depends_on=[blob]),
            )
        access = f.grant(f"{name}-deployer-blob", parent, account.id, STORAGE_BLOB_DATA_CONTRIBUTOR)
        sas = azure.storage.list_storage_account_service_sas_output(
            account_name=account.name,
            resource_group_name=f.rg.name,
            canonicalized_resource=account.name.apply(lambda a: f"/blob/{a}/{MODELS_CONTAINER}"),
            resource="c",
            permissions="r",
            protocols="https",
            shared_access_expiry_time=f"{self.az.device_sas_expiry}T00:00:00Z",
            opts=pulumi.InvokeOutputOptions(depends_on=[account, f.rg]),
        )
        endpoint = account.primary_endpoints.apply(lambda e: e.blob)
        return StoreOutputs(
            uri=endpoint.apply(lambda e: f"{e.rstrip('/')}/{MODELS_CONTAINER}/"),
            encrypted=True,
            public_access_blocked=True,
            handles=_Store(account, endpoint, pulumi.Output.secret(read_after(sas.service_sas_token, account, f.rg)), access),
        )

    # -- signing key --------------------------------------------------------------------------------------------
    def signing_key(self, parent) -> KeyOutputs:
        f = self.foundation
        name = parent.resource_name
        vault = azure.keyvault.Vault(
            f"{name}-vault",
            vault_name=f.names.apply(lambda n: n["vault"]),
            resource_group_name=f.rg.name,
            location=self.az.location,
            properties={
                "tenant_id": f.client.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enable_rbac_authorization": True,  # Azure RBAC, no access policies
                "enable_soft_delete": True,
                "soft_delete_retention_in_days": 90,
                "enable_purge_protection": True,
                "enabled_for_deployment": False,
                "enabled_for_disk_encryption": False,
                "enabled_for_template_deployment": False,
                "public_network_access": "Enabled",
            },
            tags=f.tags,
            opts=child(parent, retain_on_delete=True),
        )
        key = azure.keyvault.Key(
            f"{name}-key",
            key_name=SIGNING_KEY_NAME,
            vault_name=vault.name,
            resource_group_name=f.rg.name,
            properties={
                "kty": "EC",
                "curve_name": "P-256",
                "key_ops": ["sign", "verify"],
                "attributes": {"enabled": True, "exportable": False},
            },
            opts=child(parent, retain_on_delete=True),
        )  # devices in the field trust it: never deleted with the stack
        access = f.grant(f"{name}-deployer-crypto", parent, vault.id, KEY_VAULT_CRYPTO_USER)
        public = SigningPublicKey(f"{name}-public", {"key_url": key.key_uri_with_version}, child(parent, depends_on=[access]))
        return KeyOutputs(
            key_ref=key.key_uri_with_version,
            public_key_pem=public.public_key_pem,
            exportable=False,
            handles=_Key(key, key.key_uri_with_version, public),
        )

    # -- registry -------------------------------------------------------------------------------------------------
    def app_registry(self, parent) -> RegistryOutputs:
        f = self.foundation
        name = parent.resource_name
        registry = azure.containerregistry.Registry(
            f"{name}-acr",
            registry_name=f.names.apply(lambda n: n["registry"]),
            resource_group_name=f.rg.name,
            location=self.az.location,
            sku={"name": self.az.registry_sku},
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            public_network_access="Enabled",
            tags=f.tags,
            opts=child(parent),
        )
        scope = azure.containerregistry.ScopeMap(
            f"{name}-devices-pull",
            scope_map_name="edgefleet-devices-pull",
            registry_name=registry.name,
            resource_group_name=f.rg.name,
            actions=[f"repositories/{mf.AGENT_REPOSITORY}/content/read", f"repositories/{mf.AGENT_REPOSITORY}/metadata/read"],
            description="devices pull the edgefleet agent image, nothing else",
            opts=child(parent),
        )
        azure.containerregistry.Token(
            f"{name}-devices-token",
            token_name=DEVICE_TOKEN,
            registry_name=registry.name,
            resource_group_name=f.rg.name,
            scope_map_id=scope.id,
            status="enabled",
            opts=child(parent),
        )
        f.grant(f"{name}-deployer-push", parent, registry.id, ACR_PUSH)
        return RegistryOutputs(repository_url=registry.login_server.apply(lambda s: f"{s}/{mf.AGENT_REPOSITORY}"), handles=registry)

    def _agent(self, base: StackBase) -> pulumi.Output[mf.AgentModule]:
        """The agent module, with the signing key's id pinned in its environment: the twin also carries the public
        key, but a twin-only writer cannot make devices trust another key without changing the $edgeAgent deployment."""
        registry: azure.containerregistry.Registry = base.registry.outputs.handles
        key: _Key = base.key.outputs.handles
        return pulumi.Output.all(registry.login_server, key.public.key_id).apply(
            lambda a: mf.AgentModule(
                image=f"{a[0]}/{mf.AGENT_REPOSITORY}:{self.az.agent_version}",
                agent_version=self.az.agent_version,
                env={"EDGEFLEET_TRUSTED_KEY_ID": a[1]},
            )
        )

    # -- device groups: one base deployment each ------------------------------------------------------------------
    def device_group(self, parent, group: DeviceGroupConfig, base: StackBase) -> GroupOutputs:
        f = self.foundation
        store: _Store = base.store.outputs.handles
        key: _Key = base.key.outputs.handles
        registry: azure.containerregistry.Registry = base.registry.outputs.handles
        condition = mf.group_condition(dict(group.labels), list(group.devices))
        password = pulumi.Config(f"{PROJECT}-azure").get_secret("registryPassword")
        secrets: dict[str, Any] = {"storeSas": store.device_sas}
        if password is not None:
            secrets["registryPassword"] = password

        def content(args: list[Any]) -> dict[str, Any]:
            agent, login_server, pem, key_id = args
            registry_creds = (
                {"username": DEVICE_TOKEN, "password": "${secret:registryPassword}", "address": login_server}
                if password is not None
                else None
            )
            mc = mf.base_manifest(
                agent=agent,
                runtime=self.az.edge_runtime,
                agent_schema=self.az.edge_agent_schema,
                hub_schema=self.az.edge_hub_schema,
                trust={"keyId": key_id, "publicKeyPem": pem},
                store_sas="${secret:storeSas}",
                registry=registry_creds,
            )
            _check(mc, f"base deployment of group {group.name!r}")
            return {"modulesContent": mc}

        body = pulumi.Output.all(self._agent(base), registry.login_server, key.public.public_key_pem, key.public.key_id).apply(content)
        config = Configuration(
            f"{parent.resource_name}-base",
            {
                **f.hub_access(),
                "id_prefix": f"ef-base-{group.name}",
                "id_hint": f"agent-{self.az.agent_version}",
                "content": body,
                "secrets": pulumi.Output.secret(secrets),
                "target_condition": condition,
                "priority": self.az.deployment_priority,
                "labels": {mf.BASE_LABEL: group.name, "edgefleet-kind": "base", "edgefleet-group": group.name},
                "metrics": {},
                "exclusive_label": mf.BASE_LABEL,
                "check": "edgefleet-agent",
            },
            child(parent, depends_on=[store.access]),
        )
        return GroupOutputs(target=pulumi.Output.from_input(condition), handles=_Base(config, body))

    # -- models ---------------------------------------------------------------------------------------------------
    def publish_model(self, parent, manifest: ModelManifest, manifest_text: str, artifact: Path, base: StackBase) -> PublishOutputs:
        s: _Store = base.store.outputs.handles
        k: _Key = base.key.outputs.handles
        source = str(artifact.relative_to(self.project_dir) if artifact.is_relative_to(self.project_dir) else artifact)
        art = ModelArtifact(
            f"{parent.resource_name}-azure-artifact",
            {
                "blob_endpoint": s.blob_endpoint,
                "container": MODELS_CONTAINER,
                "key_url": k.key_url,
                "source": source,
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "manifest": manifest_text,
                **self.delta_inputs(),
            },
            child(parent, depends_on=[base.store, base.key]),
        )
        return PublishOutputs(uri=art.uri, signature=art.signature)

    # -- rings: a layered deployment and a gate each --------------------------------------------------------------
    def _ring_specs(self, spec: RingSpec, model_name: str, base: StackBase) -> pulumi.Output[list[dict[str, Any]]]:
        rings = spec.rollout.rings
        groups = [self.stack.group(r.group) for r in rings]
        conditions = mf.ring_conditions([(dict(g.labels), list(g.devices), dict(r.labels)) for g, r in zip(groups, rings, strict=True)])
        return self._agent(base).apply(
            lambda agent: [
                mf.RingDeploymentSpec(
                    rollout=spec.rollout.name,
                    ring=r.name,
                    index=i,
                    model=model_name,
                    target_condition=conditions[i],
                    priority=self.az.deployment_priority + 1,
                    agent=agent,
                    agent_schema=self.az.edge_agent_schema,
                    download_cap=r.download_cap(g),  # the ring's own, else its group's: as on every platform
                    windows=g.windows_document(),
                ).to_json()
                for i, (r, g) in enumerate(zip(rings, groups, strict=True))
            ]
        )

    def ring(self, parent, spec: RingSpec, model, group, base: StackBase) -> RingOutputs:
        f = self.foundation
        store: _Store = base.store.outputs.handles
        key: _Key = base.key.outputs.handles
        group_base: _Base = group.outputs.handles
        base_content = group_base.content
        published = model.published[self.name]
        manifest = model.manifest
        specs = self._ring_specs(spec, manifest.name, base)

        def layer(args: list[Any]) -> dict[str, Any]:
            ring_specs, uri, signature, base_mc = args
            d = DesiredModel(
                model=manifest.name,
                version=manifest.version,
                sha256=manifest.sha256,
                size=manifest.size,
                uri=uri,
                manifest=model.manifest_text,
                signature=signature,
                variants=mf.desired_variants(manifest, uri),
            )
            d = DesiredModel(**{**d.__dict__, "rollout": rollout_id(spec.rollout.name, d)})
            props = mf.ring_configuration(mf.RingDeploymentSpec.from_json(ring_specs[spec.index]), d)
            _check(
                mf.effective_manifest(base_mc["modulesContent"], props["content"]["modulesContent"]),
                f"ring {spec.ring.name!r} of rollout {spec.rollout.name!r}",
            )
            return props

        props = pulumi.Output.all(specs, published.uri, published.signature, base_content).apply(layer)
        after = {"after": spec.previous_gate} if spec.previous_gate is not None else {}
        deployment = Configuration(
            f"{parent.resource_name}-deployment",
            {
                **f.hub_access(),
                **{
                    k: props.apply(lambda p, k=k: p[k])
                    for k in ("id_prefix", "id_hint", "content", "target_condition", "priority", "labels", "metrics", "exclusive_label")
                },
                "check": "edgefleet-agent",
                **after,
            },
            child(parent, depends_on=[group_base.configuration]),
        )
        gate = RingGate(
            f"{parent.resource_name}-gate",
            {
                **f.hub_access(),
                "blob_endpoint": store.blob_endpoint,
                "progress_container": PROGRESS_CONTAINER,
                "key_url": key.key_url,
                "rollout": spec.rollout.name,
                "ring": spec.ring.name,
                "index": spec.index,
                "rings": [r.model_dump(mode="json") for r in spec.rollout.rings],
                "ring_specs": specs,
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "manifest": model.manifest_text,
                "uri": published.uri,
                "signature": published.signature,
                "poll_seconds": self.az.poll_seconds,
                "deployment": deployment.config_id,
            },
            child(parent, custom_timeouts=pulumi.CustomTimeouts(create=ring_gate_timeout(spec, 900))),
        )
        return RingOutputs(deployment=deployment.config_id, gate=gate.gate, devices=props.apply(lambda p: p["target_condition"]))


def _check(modules_content: dict[str, Any], what: str) -> None:
    """The real manifest at declaration time (vendor schemas, twin limits); the agent contract is checked on
    deploy-time values when the provider creates it."""
    problems = mf.check_manifest(modules_content, contract=False)
    if problems:
        raise EdgefleetError(f"IoT Edge manifest for the {what}", "; ".join(problems), problems[0].fix)
