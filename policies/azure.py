"""Azure's part of the rules: storage accounts and containers, container registries, Key Vault keys, the devices'
SAS expiry, and what an `edgefleet:azure` section sets.

Named by components/registry.py (`policies="policies.azure"`); policies/platforms.py describes what such a module
provides. Standard library only; imports graph, engine, settings and hardening, as `policies.x` or, in the
CrossGuard pack's own virtualenv, as `x`.
"""

from __future__ import annotations

import datetime
from typing import Any, Iterator, Mapping

if __package__:
    from .engine import Finding, NotApplicable
    from .graph import STORE, Graph, dig
    from .hardening import DEVICE_CREDENTIALS_RULE, REGISTRY_RULE, SIGNING_KEY_RULE, STORE_RULE
    from .settings import Settings, cloud_settings
else:
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import STORE, Graph, dig  # type: ignore[no-redef]
    from hardening import DEVICE_CREDENTIALS_RULE, REGISTRY_RULE, SIGNING_KEY_RULE, STORE_RULE  # type: ignore[no-redef]
    from settings import Settings, cloud_settings  # type: ignore[no-redef]

DEFAULT_AGENT_VERSION = "0.1.0"  # AzureConfig.agent_version's default (the agent image a stack deploys); tests/policy checks

AZ_STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
AZ_BLOB_CONTAINER = "azure-native:storage:BlobContainer"
AZ_REGISTRY = "azure-native:containerregistry:Registry"
AZ_KEY = "azure-native:keyvault:Key"


def stack_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {**cloud_settings(config, "azure", DEFAULT_AGENT_VERSION), "azure_sas_expiry": dig(config, "azure", "device_sas_expiry")}


def exempt(s: Settings) -> bool:
    return False


def check_store(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for a in g.of_type(AZ_STORAGE_ACCOUNT):
        found = True
        if dig(a, "inputs", "allowBlobPublicAccess") is True:
            yield Finding(f"storage account {a['name']!r} sets allowBlobPublicAccess: true", a["urn"])
        if dig(a, "inputs", "enableHttpsTrafficOnly") is False:
            yield Finding(f"storage account {a['name']!r} allows plain HTTP (enableHttpsTrafficOnly: false)", a["urn"])
        if dig(a, "inputs", "encryption", "services", "blob", "enabled") is False:
            yield Finding(f"storage account {a['name']!r} turns blob encryption off", a["urn"])
    for c in g.of_type(AZ_BLOB_CONTAINER):
        found = True
        if dig(c, "inputs", "publicAccess") in ("Blob", "Container"):
            yield Finding(
                f"blob container {c['name']!r} allows anonymous reads (publicAccess: {dig(c, 'inputs', 'publicAccess')})", c["urn"]
            )
    if not found:
        raise NotApplicable("no Azure storage accounts or blob containers")


def check_registry(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for r in g.of_type(AZ_REGISTRY):
        found = True
        if dig(r, "inputs", "adminUserEnabled") is True:
            yield Finding(f"container registry {r['name']!r} enables its admin user (a shared password): use role assignments", r["urn"])
        if dig(r, "inputs", "anonymousPullEnabled") is True:
            yield Finding(f"container registry {r['name']!r} allows anonymous pulls", r["urn"])
    if not found:
        raise NotApplicable("no Azure container registries")


def check_signing_key(g: Graph, s: Settings) -> Iterator[Finding]:
    found = False
    for k in g.of_type(AZ_KEY):
        found = True
        if dig(k, "inputs", "properties", "attributes", "exportable") is True:
            yield Finding(f"Key Vault key {k['name']!r} is exportable (properties.attributes.exportable)", k["urn"])
        if dig(k, "inputs", "properties", "releasePolicy"):
            yield Finding(f"Key Vault key {k['name']!r} has a release policy, so it can be released from the vault", k["urn"])
    if not found:
        raise NotApplicable("no Key Vault keys")


def check_device_credentials(g: Graph, s: Settings) -> Iterator[Finding]:
    """The SAS Azure devices download models with ends on a fixed date; after it, every new model fails on every
    device while the old one keeps serving, so nothing looks wrong until a rollout stalls."""
    if not s.azure_sas_expiry:
        raise NotApplicable("no Azure model store SAS in this stack")
    try:
        when = datetime.date.fromisoformat(str(s.azure_sas_expiry))
    except ValueError:
        raise NotApplicable(f"edgefleet:azure.device_sas_expiry {s.azure_sas_expiry!r} is not a date (the config check names it)") from None
    today = datetime.date.fromisoformat(s.today) if s.today else datetime.datetime.now(datetime.timezone.utc).date()
    days = (when - today).days
    if days < s.sas_warning_days:
        stores = [r["urn"] for r in g.of_type(STORE) if dig(r, "inputs", "platform") == "azure"] or [None]
        yield Finding(
            f"the devices' SAS for the Azure model store (edgefleet:azure.device_sas_expiry) ends {when.isoformat()}, "
            + (f"{days} day(s) away" if days >= 0 else f"{-days} day(s) ago")
            + f": move it at least {s.sas_warning_days} days ahead and `pulumi up` so devices get the new one",
            stores[0],
        )


PARTS = {
    STORE_RULE: check_store,
    REGISTRY_RULE: check_registry,
    SIGNING_KEY_RULE: check_signing_key,
    DEVICE_CREDENTIALS_RULE: check_device_credentials,
}
