"""`python -m agent`: one device agent process against the local hub, until SIGTERM or SIGINT (exit 0)."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading
from pathlib import Path

from agent import __version__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m agent", description="edgefleet device agent " + __version__)
    p.add_argument("--hub", required=True, type=Path, help="the local hub's SQLite file")
    p.add_argument("--device-id", required=True)
    p.add_argument("--model", required=True, help="model name, e.g. detector")
    p.add_argument("--state-dir", required=True, type=Path, help="where this device keeps its model slots")
    p.add_argument("--public-key", required=True, type=Path, help="PEM public key the models must be signed with")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="execution providers in order of preference, comma-separated (CPU is always the last resort)")
    p.add_argument("--sync-seconds", type=float, default=0.5)
    p.add_argument("--report-seconds", type=float, default=0.5)
    p.add_argument("--infer-interval", type=float, default=0.0, help="pause between inferences (0: back to back)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from agent.core import DeviceAgent
    from agent.store import StoreError
    from agent.transport import LocalHubTransport
    from edgefleet.errors import EdgefleetError
    from edgefleet.signing import load_public_key

    try:
        pem = args.public_key.read_bytes()
        load_public_key(pem, f"{args.public_key}: trusted public key")
        transport = LocalHubTransport(args.hub)
        agent = DeviceAgent(args.device_id, args.model, args.state_dir, pem, transport,
                            execution_providers=[p.strip() for p in args.providers.split(",") if p.strip()])
    except (OSError, EdgefleetError) as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        logging.getLogger("edgefleet.agent").info("%s: %s received, stopping", args.device_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.start()
        # Everything loaded so far lives as long as the process: freezing it keeps full garbage collections
        # (which hold the GIL) from scanning it, the largest source of inference pauses during a swap.
        gc.freeze()
        agent.serve_forever(stop, sync_seconds=args.sync_seconds, report_seconds=args.report_seconds,
                            infer_interval_seconds=args.infer_interval)
    except StoreError as exc:
        print(f"edgefleet-agent: {exc}", file=sys.stderr)
        return 2
    finally:
        agent.close()
        transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
