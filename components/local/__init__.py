"""The embedded local platform: a SQLite hub, a directory model store, and a fleet of simulated and real agents."""
