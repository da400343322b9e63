"""The capture store on Azure, as designed (docs/capture.md, "On AWS and Azure"): a storage account of its own, never
the model store's, with a hierarchical namespace (ADLS Gen2), where each IoT Edge device holds a directory SAS for
`<container>/<model>/<device id>/` only, allowing create and write (no read, list or delete).

Not deployed yet: the agent's IoT Edge transport has no blob sink and stacks refuse capture on Azure rings
(components/stack.py). What is here is the scope each device's SAS would be issued for, pure, so its shape is tested.
A service or user-delegation SAS with `sr=d` (directory) and `sdd` (the directory's depth) is confined to that
directory and what is under it; it needs the hierarchical namespace. Without one a SAS can only be scoped to a blob or
the whole container, and a per-device prefix cannot be enforced.
"""

from __future__ import annotations

from typing import Any

from edgefleet_agent.contract.capture import is_safe_segment

PERMISSIONS = "cw"  # create, write: what putting a new blob takes


def device_sas_scope(container: str, model: str, device_id: str, expiry: str) -> dict[str, Any]:
    """What one device's capture SAS grants: the `sr=d` directory `<model>/<device>` of `container`, depth 2, create and
    write, until `expiry` (ISO 8601). Refuses a device id or model that is not one plain path segment."""
    for what, value in (("container", container), ("model", model), ("device id", device_id)):
        if not is_safe_segment(value):
            raise ValueError(f"{what} {value!r} is not a plain path segment")
    return {
        "container": container,
        "directory": f"{model}/{device_id}",
        "signedResource": "d",
        "signedDirectoryDepth": 2,
        "permissions": PERMISSIONS,
        "expiry": expiry,
        "protocol": "https",
    }
