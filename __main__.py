"""Pulumi entry point (`pulumi up`, `pulumi preview`): see edgefleet/program.py."""

from edgefleet.program import main

main()
