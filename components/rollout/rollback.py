"""Signed rollback orders: the only way a device accepts a lower version than the one it runs."""

from __future__ import annotations

from dataclasses import replace

from components.rollout.engine import RollbackAuthorizer
from edgefleet_agent.contract.signing import Signer, rollback_order, sign_bytes
from edgefleet_agent.contract.state import DesiredModel


def rollback_authorizer(signer: Signer) -> RollbackAuthorizer:
    def authorize(previous: DesiredModel, failed: DesiredModel, reason: str) -> DesiredModel:
        order = rollback_order(previous.model, previous.version, previous.sha256, reason, failed.version, failed.sha256)
        return replace(previous, rollback_order=order.decode(), rollback_signature=sign_bytes(signer, order).to_bytes().decode())

    return authorize
