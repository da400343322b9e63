"""edgefleet's policies. `rules` lists the rules, plain functions over the declared graph kept by concern and by
platform (stdlib only, each module importable standalone by the pack); `pack` wraps them as CrossGuard policies;
`__main__` serves the pack to the Pulumi CLI. Importing this package imports nothing else, and nothing here ever
imports `__main__` (PolicyPack blocks forever)."""
