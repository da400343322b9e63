"""`python -m agent`: kept for the recipes and IoT Edge manifests already deployed, which run it (and for a
checkout's root). The agent itself is the `edgefleet_agent` package; its console script is `edgefleet-agent`."""

if __name__ == "__main__":
    from edgefleet_agent.__main__ import console

    console()
