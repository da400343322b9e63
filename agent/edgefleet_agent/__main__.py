"""`edgefleet-agent` (and `python -m agent`): the device agent process, on the local hub, on Greengrass or as an
IoT Edge module.

Exit codes: 0 stopped by SIGTERM/SIGINT (or `--install-only` installed the desired model); 2 cannot start
(bad arguments or key, missing hub, incomplete Greengrass environment, no IoT Edge environment, state
directory held by another agent); 3 the desired model was refused (Greengrass: the previous model stays
in the state directory, and the non-zero exit fails the deployment on this device).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edgefleet_agent import __version__

if TYPE_CHECKING:
    from edgefleet_agent.transports.greengrass import GreengrassTransport
    from edgefleet_agent.transports.local import LocalHubTransport
    from edgefleet_agent.trust import TrustedMetadata

EXIT_OK, EXIT_CANNOT_START, EXIT_REFUSED = 0, 2, 3
TRANSPORTS = ("local", "greengrass", "iotedge")
DEFAULT_REPORT_SECONDS = {"local": 0.5, "greengrass": 60.0, "iotedge": 60.0}
QUIET_LOGGERS = ("azure", "botocore", "boto3", "urllib3", "paho")  # their debug output can hold tokens

EPILOG = f"""\
transports:
  local       the local fleet's SQLite hub (--hub); what `edgefleet up --stack local` drives
  greengrass  an AWS IoT Greengrass v2 component: the model comes from the component's environment
              (EDGEFLEET_MODEL_MANIFEST, _SIGNATURE, _FILE under --model-dir, EDGEFLEET_ROLLBACK_ORDER/_SIGNATURE,
              EDGEFLEET_ROLLOUT, EDGEFLEET_RING), health goes to CloudWatch (EDGEFLEET_METRIC_NAMESPACE).
              A refused model makes the agent exit {EXIT_REFUSED} after its first sync, keeping the previous one.
  iotedge     an Azure IoT Edge module: the module twin's desired properties name the models (one agent per
              model unless --model is given); reports go to its reported properties. Without --public-key the
              twin's trust.publicKeyPem is used, only if it matches trust.keyId (and --trusted-key-id, if given).

exit codes:
  {EXIT_OK}  stopped by SIGTERM or SIGINT; or --install-only installed and verified the desired model
  {EXIT_CANNOT_START}  cannot start: bad arguments or key, missing hub, incomplete Greengrass environment,
     no IoT Edge environment, or another agent holds the state directory
  {EXIT_REFUSED}  the desired model was refused (greengrass, or --install-only); the reason is on stderr and the
     previously served model stays in the state directory
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="edgefleet device agent " + __version__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--transport", choices=TRANSPORTS, default="local", help="where the desired state comes from (default: local)")
    p.add_argument("--hub", type=Path, help="local: the local hub's SQLite file (required)")
    p.add_argument("--device-id", help="this device's id (iotedge: default $IOTEDGE_DEVICEID)")
    p.add_argument("--model", help="model name, e.g. detector (iotedge: default every model in the module twin)")
    p.add_argument("--model-dir", type=Path, help="greengrass: where the model component's artifacts are mounted (required)")
    p.add_argument("--state-dir", required=True, type=Path, help="where this device keeps its model slots")
    p.add_argument(
        "--public-key",
        type=Path,
        help="PEM public key the models must be signed with (required, except for iotedge, which can use the twin's)",
    )
    p.add_argument(
        "--trusted-key-id",
        default=os.environ.get("EDGEFLEET_TRUSTED_KEY_ID") or None,
        help="iotedge: the only key id (sha256:…) the twin may name (default $EDGEFLEET_TRUSTED_KEY_ID)",
    )
    p.add_argument(
        "--trusted-root",
        type=Path,
        default=Path(os.environ["EDGEFLEET_TUF_ROOT"]) if os.environ.get("EDGEFLEET_TUF_ROOT") else None,
        help="the stack's first TUF root.json, shipped beside the public key (default $EDGEFLEET_TUF_ROOT); with "
        "--metadata-url, every new install must be a current signed target (docs/signing.md)",
    )
    p.add_argument(
        "--metadata-url",
        default=os.environ.get("EDGEFLEET_TUF_METADATA_URL") or None,
        help="where the store's TUF metadata is: file://, https:// (Azure: the store's SAS is added) or s3:// "
        "(Greengrass: SigV4 with the token exchange service's credentials); default $EDGEFLEET_TUF_METADATA_URL",
    )
    p.add_argument("--metadata-refresh-seconds", type=float, default=60.0, help="retry period once the held timestamp expired")
    p.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="execution providers in order of preference, comma-separated (CPU is always the last resort)",
    )
    p.add_argument("--sync-seconds", type=float, default=0.5)
    p.add_argument(
        "--report-seconds",
        type=float,
        default=None,
        help="report period (default: 0.5 local, 60 greengrass and iotedge: each report is a CloudWatch call or a twin update)",
    )
    p.add_argument("--infer-interval", type=float, default=0.0, help="pause between inferences (0: back to back)")
    p.add_argument(
        "--install-only",
        action="store_true",
        help=f"greengrass: install and verify the desired model, then exit {EXIT_OK} (or {EXIT_REFUSED} if refused) without "
        "serving; for a component's Startup step",
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)

    t = args.transport
    need = {
        "local": ("hub", "device_id", "model", "public_key"),
        "greengrass": ("device_id", "model", "model_dir", "public_key"),
        "iotedge": (),
    }[t]
    missing = [f"--{name.replace('_', '-')}" for name in need if getattr(args, name) is None]
    if missing:
        p.error(f"--transport {t} needs {', '.join(missing)}")
    unused = [
        flag
        for flag, name, used_by in (("--hub", "hub", "local"), ("--model-dir", "model_dir", "greengrass"))
        if getattr(args, name) is not None and t != used_by
    ]
    if unused:
        p.error(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --transport {t}")
    if (args.trusted_root is None) != (args.metadata_url is None):
        p.error("--trusted-root and --metadata-url go together (the first root and where the metadata is)")
    if args.install_only and t != "greengrass":
        p.error("--install-only applies to --transport greengrass only")
    if t == "iotedge" and args.device_id is None:
        args.device_id = os.environ.get("IOTEDGE_DEVICEID") or None
        if args.device_id is None:
            p.error("--transport iotedge needs --device-id or $IOTEDGE_DEVICEID (IoT Edge sets it in every module)")
    if args.report_seconds is None:
        args.report_seconds = DEFAULT_REPORT_SECONDS[t]
    return args


def fail(message: object, code: int = EXIT_CANNOT_START) -> int:
    print(f"edgefleet-agent: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = args.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("edgefleet.agent").info("%s: %s received, stopping", args.device_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.transport == "iotedge":
        return run_iotedge(args, stop)
    return run_single(args, stop)


def run_single(args: argparse.Namespace, stop: threading.Event) -> int:
    """One model on one transport: the local hub, or the Greengrass component's environment."""
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.signing import load_public_key
    from edgefleet_agent.core import DeviceAgent
    from edgefleet_agent.store import StoreError

    greengrass = args.transport == "greengrass"
    transport: GreengrassTransport | LocalHubTransport
    try:
        pem = args.public_key.read_bytes()
        load_public_key(pem, f"{args.public_key}: trusted public key")
        if greengrass:
            from edgefleet_agent.transports.greengrass import GreengrassConfigError, GreengrassTransport

            try:
                transport = GreengrassTransport(args.model, args.model_dir)
            except GreengrassConfigError as exc:
                return fail(exc)
        else:
            try:
                from edgefleet_agent.transports.local import LocalHubTransport
            except ImportError as exc:  # a Python built without sqlite3, as on some device images
                return fail(f"the local transport is not part of this installation ({exc})")
            transport = LocalHubTransport(args.hub)
        agent = DeviceAgent(
            args.device_id,
            args.model,
            args.state_dir,
            pem,
            transport,
            execution_providers=[p.strip() for p in args.providers.split(",") if p.strip()],
            trust=trusted_metadata(args),
        )
    except (OSError, EdgefleetError) as exc:
        return fail(exc)

    try:
        if greengrass:
            agent.start()
            agent.sync()
            first = agent.build_report()  # nothing has run yet: this window is empty
            if first.status == "failed":
                kept = f"{args.model} {first.version}" if first.version else "no model"
                return fail(f"refused {args.model} {first.failed_version}: {first.error}; keeping {kept} in {args.state_dir}", EXIT_REFUSED)
            if args.install_only:
                logging.getLogger("edgefleet.agent").info("%s: %s %s installed and verified", args.device_id, args.model, first.version)
                return EXIT_OK
        agent.start()
        # Everything loaded so far lives as long as the process: freezing it keeps full garbage collections
        # (which hold the GIL) from scanning it, the largest source of inference pauses during a swap.
        gc.freeze()
        agent.serve_forever(
            stop, sync_seconds=args.sync_seconds, report_seconds=args.report_seconds, infer_interval_seconds=args.infer_interval
        )
    except StoreError as exc:
        return fail(exc)
    finally:
        agent.close()
        transport.close()
    return EXIT_OK


def trusted_metadata(args: argparse.Namespace) -> TrustedMetadata | None:
    """The store's TUF client when the device was given its first root (raises OSError/ValueError on a bad file)."""
    if args.trusted_root is None:
        logging.getLogger("edgefleet.agent").warning(
            "%s: no --trusted-root: update metadata is not checked (revoked versions and frozen channels go unnoticed)", args.device_id
        )
        return None
    from edgefleet_agent.trust import TrustedMetadata, load_root

    try:
        root = load_root(args.trusted_root)
    except ValueError as exc:
        raise OSError(f"{args.trusted_root}: not TUF root metadata ({exc})") from None
    return TrustedMetadata(root, args.metadata_url, args.state_dir / args.model / "tuf", refresh_seconds=args.metadata_refresh_seconds)


def run_iotedge(args: argparse.Namespace, stop: threading.Event) -> int:
    """Every model the module twin names (or only --model), one DeviceAgent each."""
    from edgefleet_agent.transports.iotedge import EdgeSupervisor, IoTEdgeTransport, TrustRefused, resolve_trust

    pem = None
    if args.public_key is not None:
        try:
            pem = args.public_key.read_bytes()
            resolve_trust(pem, None, args.trusted_key_id, file_label=f"{args.public_key}: trusted public key")
        except OSError as exc:
            return fail(exc)
        except TrustRefused as exc:
            return fail(exc.reason)
    try:
        transport = IoTEdgeTransport.from_edge_environment()
    except (ImportError, OSError, ValueError) as exc:
        return fail(f"cannot create the IoT Edge module client: {exc}")
    try:
        try:
            transport.connect()
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own ClientError family
            return fail(f"cannot read the module twin: {type(exc).__name__}: {exc}")
        supervisor = EdgeSupervisor(
            transport,
            args.device_id,
            args.state_dir,
            public_key_pem=pem,
            pinned_key_id=args.trusted_key_id,
            model=args.model,
            providers=[p.strip() for p in args.providers.split(",") if p.strip()],
            sync_seconds=args.sync_seconds,
            report_seconds=args.report_seconds,
            infer_interval=args.infer_interval,
        )
        try:
            supervisor.run(stop)
        finally:
            supervisor.close()
    finally:
        transport.close()
    return EXIT_OK


def console() -> None:
    """The `edgefleet-agent` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
