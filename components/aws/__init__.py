"""The AWS platform: AWS IoT Greengrass v2 fleets declared with pulumi-aws and pulumi-aws-native.

Import-free on purpose: `edgefleet.synth` probes `components.aws.mocks`, and the gate's dynamic provider
runs in a process that imports only what it needs. Start with platform.py; docs/aws.md has the tour.
"""
