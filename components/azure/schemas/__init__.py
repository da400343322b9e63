"""IoT Edge deployment manifest schemas, vendored as published (third-party data; see README.md here).

From Azure/azure-iot-cli-extension, azext_iot/assets/ (commit a42f57a): the schemas `az iot edge deployment
create` applies to `$edgeAgent` / `$edgeHub` for the schemaVersion a manifest declares. edgefleet validates every
generated base and effective ring manifest against them (components/azure/manifest.py, `vendor_problems`).
Shipped as package data so the product, not only the tests, can check manifests.

Copyright (c) Microsoft Corporation. Licensed under the MIT License.
"""
