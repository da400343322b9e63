"""Tests for issue 2, the foundation: manifests, model add/validate/sign/verify, stack config, offline synth."""
