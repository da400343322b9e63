"""edgefleet's policies. `rules` holds the rules as plain functions over the declared graph (stdlib only);
`pack` wraps them as CrossGuard policies; `__main__` serves the pack to the Pulumi CLI. Importing this
package imports nothing else, and nothing here ever imports `__main__` (PolicyPack blocks forever)."""
