"""The rollout engine: ring order, gates, rollback. Pure Python, no cloud SDKs, no Pulumi.

types.py   the data that crosses the platform boundary (desired state, device reports, observations)
hub.py     the FleetHub interface each platform implements for the engine
membership.py  which devices fall in which ring (pure, property-tested)
gate.py    a gate's verdict from an observation (pure)
quality.py quality criteria: shadow agreement, comparisons with a control group, their statistics (pure)
engine.py  promotion, resumable progress, rollback
"""
