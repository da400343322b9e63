"""Which changed inputs make Azure replace a resource, for the Azure types edgefleet declares that do not say so
themselves: what `edgefleet plan` calls a replacement. edgefleet/plan/replace.py reads it through
components/registry.py and describes the shape. Pure data: no imports, no Pulumi.

Dynamic providers answer for themselves (their diff's DiffResult.replaces); IMMUTABLE_BY_NAME is what the plan
falls back to when it cannot ask one.
"""

REPLACE_ON: dict[str, tuple[str, ...]] = {
    "azure-native:storage:StorageAccount": ("accountName", "resourceGroupName", "location"),
    "azure-native:storage:BlobContainer": ("accountName", "containerName", "resourceGroupName"),
    "azure-native:containerregistry:Registry": ("registryName", "resourceGroupName", "location"),
    "azure-native:keyvault:Key": ("keyName", "vaultName", "resourceGroupName"),
    "azure-native:iothub:IotHubResource": ("resourceName", "resourceGroupName", "location"),
}

REPLACE_ALL_BUT: dict[str, tuple[str, ...]] = {}

# IoT Hub configurations (IoT Edge layered deployments) cannot change their content once created. Each SDK (and
# edgefleet's own dynamic provider) spells their type differently, so they are known by name.
IMMUTABLE_BY_NAME: tuple[dict, ...] = (
    {
        "type_mentions": ("azure", "iothub"),
        "kind_mentions": ("configuration", "edgedeployment", "layereddeployment"),
        "inputs": ("content",),
        "why": "IoT Hub configuration content is immutable",
    },
)
