"""The `edgefleet:azure` stack section: IoT Hub, storage, registry and IoT Edge runtime settings (docs/azure.md)."""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from components.rollout.spec import Name, Strict
from edgefleet_agent.contract.manifest import check_semver


class AzureConfig(Strict):
    """Azure IoT Edge settings (see docs/azure.md). Globally unique names derive from subscription and stack."""

    location: str
    resource_group: Name | None = None
    iot_hub_sku: Literal["S1", "S2", "S3"] = "S1"  # layered deployments need a standard tier
    iot_hub_units: int = Field(default=1, ge=1, le=200)
    agent_version: str = "0.1.0"
    deployment_priority: int = Field(default=10, ge=0, le=1_000_000)  # the base deployment's; ring layers sit above it
    edge_runtime: Literal["1.4", "1.5"] = "1.5"  # tag of the $edgeAgent / $edgeHub images
    edge_agent_schema: Literal["1.0", "1.1"] = "1.1"
    edge_hub_schema: Literal["1.0", "1.1", "1.2"] = "1.2"
    storage_sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_GZRS"] = "Standard_LRS"
    registry_sku: Literal["Basic", "Standard", "Premium"] = "Standard"
    device_sas_expiry: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")  # read-only store SAS the devices download with
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    deployer_principal_type: Literal["User", "ServicePrincipal", "Group"] = "User"  # who runs `pulumi up`: gets the data-plane roles

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9]*", value):
            hint = re.sub(r"[^a-z0-9]", "", value.lower()) or "westeurope"
            raise ValueError(
                f"{value!r} is not an Azure region name; use the lower-case name such as {hint!r} "
                "(`az account list-locations -o table` lists them)"
            )
        return value

    _v_agent_version = field_validator("agent_version")(check_semver)

    @field_validator("device_sas_expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date (YYYY-MM-DD)") from None
        return value
