"""Which changed inputs make the local platform replace a resource: none from a table. Its resources are
edgefleet's dynamic providers, which answer for themselves (their diff's DiffResult.replaces), so the tables
edgefleet/plan/replace.py reads through components/registry.py are empty. Pure data: no imports, no Pulumi.
"""

REPLACE_ON: dict[str, tuple[str, ...]] = {}
REPLACE_ALL_BUT: dict[str, tuple[str, ...]] = {}
IMMUTABLE_BY_NAME: tuple[dict, ...] = ()
