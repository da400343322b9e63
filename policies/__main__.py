"""The CrossGuard policy pack: `pulumi preview --policy-pack policies`.

PolicyPack starts a gRPC server and blocks forever: nothing may import this module (tests call
`pack.build_policies()[i].validate(...)` instead). Pulumi runs it with policies/ as sys.path[0].
"""

from pack import PACK_NAME, build_policies
from pulumi_policy import PolicyPack

PolicyPack(
    name=PACK_NAME,
    policies=build_policies(),
    description="edgefleet: signed, digest-pinned models; canary-first production rollouts; metric floors and "
    "regressions; agent support for I/O changes; hardware fit; private, encrypted, hardened platforms.",
)
