"""Azure IoT Edge platform binding (see docs/azure.md). Import-free: modules are loaded only when a stack uses Azure."""
