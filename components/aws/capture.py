"""The capture store on AWS, as designed (docs/capture.md, "On AWS and Azure"): an S3 bucket of its own, never the model
store's, where each Greengrass core device may only put objects under `<prefix>/<model>/<thing name>/`.

Not deployed yet: the agent's Greengrass transport has no S3 sink and stacks refuse capture on AWS rings
(components/stack.py). What is here is the policy document the token exchange role would carry, pure, so its shape
and its confinement are tested now.

The variable: a Greengrass device calls S3 with credentials from the AWS IoT credential provider (the token exchange
service), and IAM policies evaluated for those credentials can name the device as `${credentials-iot:ThingName}`.
(`${iot:Connection.Thing.ThingName}` is the AWS IoT Core policy variable for MQTT connections; it is not available
to S3.) No `*` comes before the variable in a resource: `<prefix>/*/${thing}/*` would let `cam-1` write
`<prefix>/detector/cam-2/cam-1/x`, under `cam-2`'s prefix. So the document names each model's prefix.
"""

from __future__ import annotations

from typing import Any

THING = "${credentials-iot:ThingName}"


def device_capture_policy(bucket: str, prefix: str, models: list[str]) -> dict[str, Any]:
    """The IAM statement a ring's devices need to write their captures: s3:PutObject under their own prefixes, nothing
    else (no read, list or delete: a device cannot read back or remove anybody's samples, its own included)."""
    if not bucket or "/" in bucket or "*" in bucket:
        raise ValueError(f"bucket {bucket!r} is not a bucket name")
    base = prefix.strip("/")
    if "*" in base or "$" in base:
        raise ValueError(f"prefix {prefix!r} may not hold wildcards or policy variables")
    bad = [m for m in models if not m or "/" in m or "*" in m or "$" in m]
    if bad or not models:
        raise ValueError(f"models must be plain names, not {bad or models!r}")
    head = f"arn:aws:s3:::{bucket}/" + (f"{base}/" if base else "")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "EdgefleetCaptureOwnPrefixOnly",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": [f"{head}{model}/{THING}/*" for model in sorted(set(models))],
            }
        ],
    }
