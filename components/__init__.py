"""Pulumi components for edgefleet. Submodules import Pulumi; this package itself imports nothing,
so the device agent can use `components.local.hub` and `components.rollout` without Pulumi."""
