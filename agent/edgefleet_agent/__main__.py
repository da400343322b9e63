"""`edgefleet-agent` (and `python -m agent`): the device agent process.

    edgefleet-agent run --transport local|greengrass|iotedge …   the device: desired state from the fleet, one
                                                                 Open Inference Protocol endpoint for all its models
    edgefleet-agent serve --model-dir DIR --public-key KEY       one signed model directory, no fleet
    edgefleet-agent --transport …                                (no command) the same as `run`: what deployed
                                                                 recipes and IoT Edge manifests run

Exit codes: 0 stopped by SIGTERM/SIGINT (or `--install-only` installed the desired model); 2 cannot start
(bad arguments or key, missing hub, incomplete Greengrass environment, no IoT Edge environment, state
directory held by another agent, endpoint address in use); 3 the model was refused (Greengrass with --model: the previous model
stays in the state directory, and the non-zero exit fails the deployment on this device; `serve`: the directory does
not verify or does not load).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edgefleet_agent import __version__
from edgefleet_agent.contract.iotedge import ENDPOINT_HOST_ENV, ENDPOINT_PORT, ENDPOINT_PORT_ENV
from edgefleet_agent.logs import DEFAULT_EVERY_SECONDS
from edgefleet_agent.logs import install as install_repeat_filter

if TYPE_CHECKING:
    from edgefleet_agent.contract.state import DesiredModel, DeviceReport
    from edgefleet_agent.core import DeviceAgent
    from edgefleet_agent.endpoint import InferenceEndpoint
    from edgefleet_agent.transports.greengrass import GreengrassTransport
    from edgefleet_agent.transports.local import LocalHubTransport
    from edgefleet_agent.trust import TrustedMetadata

EXIT_OK, EXIT_CANNOT_START, EXIT_REFUSED = 0, 2, 3
TRANSPORTS = ("local", "greengrass", "iotedge")
COMMANDS = ("run", "serve")
DEFAULT_REPORT_SECONDS = {"local": 0.5, "greengrass": 60.0, "iotedge": 60.0}
# The local fleet runs many devices' agents on one machine: each takes a free port unless told one.
DEFAULT_PORT = {"local": 0, "greengrass": ENDPOINT_PORT, "iotedge": ENDPOINT_PORT}
HOST_ENV, PORT_ENV = ENDPOINT_HOST_ENV, ENDPOINT_PORT_ENV
QUIET_LOGGERS = ("azure", "botocore", "boto3", "urllib3", "paho")  # their debug output can hold tokens

ENDPOINT_HELP = """endpoint:
  One Open Inference Protocol (KServe v2) endpoint over HTTP serves every model of this process:
  POST http://HOST:PORT/v2/models/<model>/infer (JSON or binary tensors), GET /v2/health/ready, /v2/models/<model>.
  Bound to 127.0.0.1 (only the device's own applications) unless --host says otherwise; --port picks the port
  (defaults: 8000; `run --transport local` takes a free port, as the local fleet runs many agents on one machine).
  $EDGEFLEET_AGENT_HOST and $EDGEFLEET_AGENT_PORT set the defaults where there is no command line (an IoT Edge
  module: --host 0.0.0.0 there lets the other modules reach it over the module network). `run` writes the address to
  <state-dir>/endpoint.json. Requests carrying a "label" parameter (the true class) count towards live accuracy.
  Applications sharing the agent's /dev/shm can pass tensors in shared memory (Triton's system shared-memory
  extension: POST /v2/systemsharedmemory/region/<name>/register), within --shm-max-regions and --shm-max-mib.
"""

RUN_EPILOG = f"""transports:
  local       the local fleet's SQLite hub (--hub); what `edgefleet up --stack local` drives
  greengrass  an AWS IoT Greengrass v2 component, one per device: every model component hands its desired state
              over in <state-dir>/_greengrass/models/<model>/ and waits for the agent's verdict there (a refused
              version fails that model component's Startup, not this process); health goes to CloudWatch
              (EDGEFLEET_METRIC_NAMESPACE). With --model and --model-dir (recipes before agent 0.4.0): one model
              from the component's environment (EDGEFLEET_MODEL_MANIFEST, _SIGNATURE, _FILE under --model-dir,
              EDGEFLEET_ROLLBACK_ORDER/_SIGNATURE, EDGEFLEET_ROLLOUT, EDGEFLEET_RING); a refused model makes the
              agent exit {EXIT_REFUSED} after its first sync, keeping the previous one.
  iotedge     an Azure IoT Edge module: the module twin's desired properties name the models (one agent per
              model unless --model is given); reports go to its reported properties. Without --public-key the
              twin's trust.publicKeyPem is used, only if it matches trust.keyId (and --trusted-key-id, if given).

{ENDPOINT_HELP}
traffic:
  Health (requests, errors, NaN/Inf outputs, latency, predicted classes) comes from the applications' requests.
  --synthetic-traffic (or --infer-interval) adds a thread sending seeded random inputs, for demos and the local
  fleet's simulated devices only: never on a real device, where it would be what the gates judge.

exit codes:
  {EXIT_OK}  stopped by SIGTERM or SIGINT; or --install-only installed and verified the desired model
  {EXIT_CANNOT_START}  cannot start: bad arguments or key, missing hub, incomplete Greengrass environment,
     no IoT Edge environment, another agent holds the state directory, or the endpoint's address is in use
  {EXIT_REFUSED}  the desired model was refused (greengrass with --model, or --install-only); the reason is on stderr and the
     previously served model stays in the state directory

Without a command, edgefleet-agent runs `run` (what deployed recipes and manifests call). To try one signed model
without a fleet: edgefleet-agent serve --help.
"""

SERVE_EPILOG = f"""Verifies the directory exactly as a device verifies an install: model.yaml.sig against --public-key, the artifact's
sha256 and size against the signed manifest, and min_agent_version against this agent ({__version__}); then loads
and warms the model and serves it. Revocation is NOT checked here: a version the fleet has since revoked still serves,
as long as the key signed it. Nothing is written beside the model: its verified copy lives in a temporary directory.

{ENDPOINT_HELP}
exit codes:
  {EXIT_OK}  stopped by SIGTERM or SIGINT
  {EXIT_CANNOT_START}  cannot start: bad arguments, an unreadable or invalid --public-key, the address is in use
  {EXIT_REFUSED}  the directory does not verify (signature, sha256 or size, min_agent_version, manifest) or onnxruntime
     cannot load or run it: stderr names the file, the problem and the fix
"""


def _add_endpoint_flags(p: argparse.ArgumentParser, port_help: str) -> None:
    p.add_argument(
        "--host",
        default=os.environ.get(HOST_ENV) or "127.0.0.1",
        help=f"address the endpoint listens on (default ${HOST_ENV} or 127.0.0.1: the device's own applications only)",
    )
    p.add_argument("--port", type=int, default=None, help=port_help)
    p.add_argument(
        "--max-request-mib",
        type=float,
        default=64.0,
        help="largest inference request body accepted, in MiB; larger ones are answered 413 (default 64)",
    )
    p.add_argument(
        "--shm-max-regions",
        type=int,
        default=None,
        help="system shared-memory regions applications may register at once (default 16; 0 refuses every one)",
    )
    p.add_argument(
        "--shm-max-mib",
        type=float,
        default=None,
        help="MiB of registered shared-memory regions the agent maps at most (default 256)",
    )


def _endpoint_limits(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.max_body_bytes = int(args.max_request_mib * (1 << 20))
    if args.max_body_bytes <= 0:
        p.error("--max-request-mib must be positive")
    args.shm_max_bytes = int(args.shm_max_mib * (1 << 20)) if args.shm_max_mib is not None else None
    if (args.shm_max_regions or 0) < 0 or (args.shm_max_bytes or 0) < 0:
        p.error("--shm-max-regions and --shm-max-mib must not be negative (0 refuses every region)")


def _env_port(p: argparse.ArgumentParser) -> int | None:
    raw = os.environ.get(PORT_ENV)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        p.error(f"${PORT_ENV}={raw!r} is not a port number")


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-agent [run]",
        description=f"edgefleet device agent {__version__}: installs the models the fleet wants once they verify, "
        "serves them to the device's applications on one Open Inference Protocol endpoint, reports their health",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--transport", choices=TRANSPORTS, default="local", help="where the desired state comes from (default: local)")
    p.add_argument("--hub", type=Path, help="local: the local hub's SQLite file (required)")
    p.add_argument("--device-id", help="this device's id (iotedge: default $IOTEDGE_DEVICEID)")
    p.add_argument(
        "--model",
        action="append",
        help="model name, e.g. detector; repeat for several models on one endpoint (iotedge: default every model in the "
        "module twin; greengrass: every model the model components hand over, or exactly one from the environment)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        help="greengrass with --model (recipes before agent 0.4.0): where the model component's artifacts are mounted",
    )
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
        "--patch-memory-mb",
        type=float,
        default=16.0,
        help="the most memory applying a delta patch may hold, in MiB (default 16; a cdc-xz-1 patch needs about 1.7); "
        "a patch needing more, like any failed patch, means the full download (docs/deltas.md). 0: never use patches",
    )
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
    _add_endpoint_flags(p, f"port the endpoint listens on (default ${PORT_ENV}, else 8000; with --transport local a free port)")
    p.add_argument(
        "--synthetic-traffic",
        action="store_true",
        help="also send seeded random inputs to each model, back to back (demos and simulated devices only; off by default)",
    )
    p.add_argument(
        "--infer-interval",
        type=float,
        default=None,
        help="pause between synthetic requests, in seconds; implies --synthetic-traffic",
    )
    p.add_argument(
        "--install-only",
        action="store_true",
        help=f"greengrass with --model: install and verify the desired model, then exit {EXIT_OK} (or {EXIT_REFUSED} if refused) "
        "without serving; for a component's Startup step",
    )
    p.add_argument(
        "--capture-dir",
        type=Path,
        help="local: the stack's capture store; this device writes captured samples (only when its desired state asks) under "
        "<capture-dir>/<model>/<device-id>/ and nowhere else. Without it, nothing is captured",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-repeat-seconds",
        type=float,
        default=DEFAULT_EVERY_SECONDS,
        help=f"log a repeated warning or error once per this many seconds, with how often it recurred (default {DEFAULT_EVERY_SECONDS:.0f})",
    )
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """`run`'s arguments (argv without the command word)."""
    p = run_parser()
    args = p.parse_args(argv)
    args.command = "run"

    t = args.transport
    need = {
        "local": ("hub", "device_id", "model", "public_key"),
        "greengrass": ("device_id", "public_key", *(("model_dir",) if args.model else ())),
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
    if args.patch_memory_mb < 0:
        p.error("--patch-memory-mb must be 0 or more")
    if args.install_only and (t != "greengrass" or not args.model):
        p.error("--install-only applies to --transport greengrass with --model only")
    models: list[str] = list(dict.fromkeys(args.model or []))
    if t == "greengrass" and len(models) > 1:
        p.error(
            "--transport greengrass takes at most one --model (the component's environment describes one model; "
            "without --model, every model the model components hand over)"
        )
    if t == "greengrass" and not models and args.model_dir is not None:
        p.error("--model-dir needs --model: without it the models come from <state-dir>/_greengrass")
    if t == "iotedge" and len(models) > 1:
        p.error("--transport iotedge takes at most one --model (without it, every model the module twin names)")
    args.models = models
    args.model = models[0] if models else None
    if t == "iotedge" and args.device_id is None:
        args.device_id = os.environ.get("IOTEDGE_DEVICEID") or None
        if args.device_id is None:
            p.error("--transport iotedge needs --device-id or $IOTEDGE_DEVICEID (IoT Edge sets it in every module)")
    if args.report_seconds is None:
        args.report_seconds = DEFAULT_REPORT_SECONDS[t]
    if args.port is None:
        env = _env_port(p)
        args.port = env if env is not None else DEFAULT_PORT[t]
    args.synthetic = args.synthetic_traffic or args.infer_interval is not None
    if args.infer_interval is None:
        args.infer_interval = 0.0
    _endpoint_limits(p, args)
    return args


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-agent serve",
        description="Serve one signed model directory (models/<name>: model.yaml, model.yaml.sig, the .onnx) on an Open "
        "Inference Protocol endpoint, verified exactly as a device verifies it, without a fleet. Revocation is not checked.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model-dir", required=True, type=Path, help="the signed model directory, e.g. models/detector")
    p.add_argument("--public-key", required=True, type=Path, help="PEM public key the model must be signed with")
    p.add_argument(
        "--variant",
        default=None,
        metavar="KIND",
        help="serve this build of the version: fp32 (the reference), int8, fp16 (default: the best this machine can run, "
        "from its arch, onnxruntime's providers and memory; docs/models.md#variants)",
    )
    _add_endpoint_flags(p, f"port the endpoint listens on (default ${PORT_ENV}, else 8000; 0: any free port)")
    p.add_argument(
        "--providers",
        default="CPUExecutionProvider",
        help="execution providers in order of preference, comma-separated (CPU is always the last resort)",
    )
    p.add_argument("--report-seconds", type=float, default=60.0, help="how often to log a summary of the requests served (default 60)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--log-repeat-seconds",
        type=float,
        default=DEFAULT_EVERY_SECONDS,
        help=f"log a repeated warning or error once per this many seconds, with how often it recurred (default {DEFAULT_EVERY_SECONDS:.0f})",
    )
    return p


def parse_serve_args(argv: list[str]) -> argparse.Namespace:
    p = serve_parser()
    args = p.parse_args(argv)
    args.command = "serve"
    if args.port is None:
        env = _env_port(p)
        args.port = env if env is not None else 8000
    _endpoint_limits(p, args)
    return args


def parse_command(argv: list[str]) -> argparse.Namespace:
    """`run …`, `serve …`, or (no command word) the arguments of `run`."""
    if argv and argv[0] == "serve":
        return parse_serve_args(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    elif argv and argv[0] == "--version":
        print(f"edgefleet-agent {__version__}")
        raise SystemExit(EXIT_OK)
    return parse_args(argv)


def fail(message: object, code: int = EXIT_CANNOT_START) -> int:
    print(f"edgefleet-agent: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_command(sys.argv[1:] if argv is None else list(argv))
    level = args.log_level.upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    repeats = install_repeat_filter(args.log_repeat_seconds)

    stop = threading.Event()
    who = getattr(args, "device_id", None) or "edgefleet-agent"

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("edgefleet.agent").info("%s: %s received, stopping", who, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.command == "serve":
            return run_serve(args, stop)
        if args.transport == "iotedge":
            return run_iotedge(args, stop)
        if args.transport == "greengrass" and not args.models:
            return run_greengrass(args, stop)
        return run_single(args, stop)
    finally:
        for line in repeats.summary():
            print(f"edgefleet-agent: at exit, {line}", file=sys.stderr, flush=True)


def open_endpoint(args: argparse.Namespace) -> InferenceEndpoint | str:
    """The endpoint, bound (not yet serving), or why it cannot be."""
    from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry
    from edgefleet_agent.shm import SharedMemoryRegions

    try:
        regions = SharedMemoryRegions()
        if args.shm_max_regions is not None:
            regions.max_regions = args.shm_max_regions
        if args.shm_max_bytes is not None:
            regions.max_mapped_bytes = args.shm_max_bytes
        return InferenceEndpoint(ModelRegistry(), host=args.host, port=args.port, max_body_bytes=args.max_body_bytes, regions=regions)
    except OSError as exc:
        return f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; pass a free --port (or --port 0 for any)"
    except OverflowError as exc:
        return f"--port {args.port}: {exc}"


def write_endpoint_file(state_dir: Path, endpoint: InferenceEndpoint, models: list[str]) -> Path | None:
    """<state-dir>/endpoint.json: where this process serves, for the applications and tools on the device."""
    from edgefleet_agent.client import ENDPOINT_FILE

    path = Path(state_dir) / ENDPOINT_FILE
    tmp = path.with_name(f".{ENDPOINT_FILE}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"url": endpoint.url, "models": models, "pid": os.getpid(), "protocol": "open-inference/v2"}) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        logging.getLogger("edgefleet.agent").warning("could not write %s: %s", path, exc)
        return None
    return path


def run_single(args: argparse.Namespace, stop: threading.Event) -> int:
    """The local hub (one or more models) or the Greengrass component's environment (one model), one endpoint."""
    from edgefleet_agent.capture import CaptureSinkError, LocalCaptureSink
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.signing import load_public_key
    from edgefleet_agent.core import DeviceAgent
    from edgefleet_agent.serving import SessionCache
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
        cache = SessionCache()
        providers = [p.strip() for p in args.providers.split(",") if p.strip()]
        root = trusted_root(args)
        capture_dir = getattr(args, "capture_dir", None) if args.transport == "local" else None
        agents = [
            DeviceAgent(
                args.device_id,
                m,
                args.state_dir,
                pem,
                transport,
                execution_providers=providers,
                session_cache=cache,
                trust=trusted_metadata(args, root, m),
                capture_sink=LocalCaptureSink(capture_dir, m, args.device_id) if capture_dir is not None else None,
                patch_memory_bytes=int(args.patch_memory_mb * (1 << 20)),
            )
            for m in args.models
        ]
    except (OSError, EdgefleetError, CaptureSinkError) as exc:
        return fail(exc)

    endpoint: InferenceEndpoint | None = None
    endpoint_file: Path | None = None
    try:
        if greengrass:
            agent = agents[0]
            agent.start()
            agent.sync()
            first = agent.build_report()  # nothing has run yet: this window is empty
            if first.status == "failed":
                kept = f"{args.model} {first.version}" if first.version else "no model"
                return fail(f"refused {args.model} {first.failed_version}: {first.error}; keeping {kept} in {args.state_dir}", EXIT_REFUSED)
            if args.install_only:
                logging.getLogger("edgefleet.agent").info("%s: %s %s installed and verified", args.device_id, args.model, first.version)
                return EXIT_OK
        opened = open_endpoint(args)
        if isinstance(opened, str):
            return fail(opened)
        endpoint = opened
        for agent in agents:
            agent.start()
            endpoint.registry.add(agent)
        # Everything loaded so far lives as long as the process: freezing it keeps full garbage collections
        # (which hold the GIL) from scanning it, the largest source of inference pauses during a swap.
        gc.freeze()
        endpoint.start()
        endpoint_file = write_endpoint_file(args.state_dir, endpoint, args.models)
        serve_all(agents, stop, args)
    except StoreError as exc:
        return fail(exc)
    finally:
        if endpoint is not None:
            endpoint.close()
        if endpoint_file is not None:
            endpoint_file.unlink(missing_ok=True)
        for agent in agents:
            agent.close()
        transport.close()
    return EXIT_OK


def trusted_root(args: argparse.Namespace) -> bytes | None:
    """The stack's first TUF root, when the device was given one (raises OSError on a bad file)."""
    if args.trusted_root is None:
        logging.getLogger("edgefleet.agent").warning(
            "%s: no --trusted-root: update metadata is not checked (revoked versions and frozen channels go unnoticed)", args.device_id
        )
        return None
    from edgefleet_agent.trust import load_root

    try:
        return load_root(args.trusted_root)
    except ValueError as exc:
        raise OSError(f"{args.trusted_root}: not TUF root metadata ({exc})") from None


def trusted_metadata(args: argparse.Namespace, root: bytes | None, model: str) -> TrustedMetadata | None:
    """One model's TUF client (each model keeps its own metadata cache under <state-dir>/<model>/tuf/)."""
    if root is None:
        return None
    from edgefleet_agent.trust import TrustedMetadata

    return TrustedMetadata(root, args.metadata_url, args.state_dir / model / "tuf", refresh_seconds=args.metadata_refresh_seconds)


def serve_all(agents: list[DeviceAgent], stop: threading.Event, args: argparse.Namespace) -> None:
    """Each model's agent syncs and reports on threads of its own until `stop`; the endpoint serves them all."""
    threads = [
        threading.Thread(
            target=agent.serve_forever,
            args=(stop,),
            kwargs={
                "sync_seconds": args.sync_seconds,
                "report_seconds": args.report_seconds,
                "infer_interval_seconds": args.infer_interval,
                "synthetic_traffic": args.synthetic,
            },
            name=f"agent-{agent.model}",
        )
        for agent in agents
    ]
    for t in threads:
        t.start()
    stop.wait()
    for t in threads:
        t.join()


class _FixedTransport:
    """`serve`'s desired state: the one directory, forever; reports become a log line per window with requests."""

    def __init__(self, desired: DesiredModel) -> None:
        self.desired_model = desired
        self.log = logging.getLogger("edgefleet.agent.serve")

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self.desired_model

    def report(self, report: DeviceReport) -> None:
        if not report.inferences:
            return
        self.log.info(
            "%s %s: %d requests, %d errors, %d with NaN/Inf outputs, p50 %s ms, p99 %s ms",
            report.model,
            report.version,
            report.inferences,
            report.errors,
            report.invalid_outputs,
            report.p50_latency_ms,
            report.p99_latency_ms,
        )


def run_serve(args: argparse.Namespace, stop: threading.Event) -> int:
    """One signed model directory, verified as a device verifies an install, on one endpoint."""
    import tempfile

    from edgefleet_agent.contract.artifact import verify_model_dir
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.manifest import ModelDir, version_key
    from edgefleet_agent.contract.signing import load_public_key
    from edgefleet_agent.contract.state import DesiredModel
    from edgefleet_agent.core import DeviceAgent

    try:
        pem = args.public_key.read_bytes()
        trusted = load_public_key(pem, f"{args.public_key}: trusted public key")
    except OSError as exc:
        return fail(f"{args.public_key}: cannot read the public key: {exc.strerror or exc}")
    except EdgefleetError as exc:
        return fail(exc)
    model_dir = ModelDir(args.model_dir)
    try:
        manifest = verify_model_dir(model_dir, trusted, args.variant)
        if version_key(manifest.min_agent_version) > version_key(__version__):
            raise EdgefleetError(
                str(model_dir.manifest_path),
                f"{manifest.name} {manifest.version} needs agent {manifest.min_agent_version} or newer; this agent is {__version__}",
                f"upgrade edgefleet-agent to {manifest.min_agent_version} or newer",
            )
        manifest_text = model_dir.manifest_bytes().decode("utf-8")
        signature_text = model_dir.signature_path.read_text(encoding="utf-8")
    except EdgefleetError as exc:
        return fail(f"refusing {args.model_dir}: {exc}", EXIT_REFUSED)
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"refusing {args.model_dir}: {exc}", EXIT_REFUSED)
    desired = DesiredModel(
        model=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        size=manifest.size,
        uri=model_dir.artifact_path(manifest).absolute().as_uri(),
        manifest=manifest_text,
        signature=signature_text,
    )
    opened = open_endpoint(args)
    if isinstance(opened, str):
        return fail(opened)
    endpoint = opened
    with tempfile.TemporaryDirectory(prefix="edgefleet-serve-") as state:
        agent = DeviceAgent(
            "serve",
            manifest.name,
            Path(state),
            pem,
            _FixedTransport(desired),
            execution_providers=[p.strip() for p in args.providers.split(",") if p.strip()],
            durable=False,
            variant=args.variant,
        )
        try:
            agent.sync()  # the same install a device runs: signature, digest, min_agent_version, load and warm-up
            first = agent.build_report()
            if first.status != "ok":
                return fail(f"refusing {args.model_dir}: {manifest.name} {manifest.version}: {first.error}", EXIT_REFUSED)
            endpoint.registry.add(agent)
            gc.freeze()
            endpoint.start()
            print(
                f"edgefleet-agent: serving {manifest.name} {manifest.version} at {endpoint.url}/v2/models/{manifest.name} "
                f"(build {agent.current_variant}; Open Inference Protocol; revocation is not checked)",
                file=sys.stderr,
                flush=True,
            )
            agent.serve_forever(stop, sync_seconds=3600.0, report_seconds=args.report_seconds)
        finally:
            endpoint.close()
            agent.close()
    return EXIT_OK


def run_greengrass(args: argparse.Namespace, stop: threading.Event) -> int:
    """The device's one agent component: every model its model components hand over, all on one endpoint."""
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.greengrass import ENV_NAMESPACE
    from edgefleet_agent.contract.signing import load_public_key
    from edgefleet_agent.transports.greengrass import GreengrassSupervisor, HandoffTransport, UpdateDeferrer

    try:
        pem = args.public_key.read_bytes()
        load_public_key(pem, f"{args.public_key}: trusted public key")
        root = trusted_root(args)
    except (OSError, EdgefleetError) as exc:
        return fail(exc)
    transport = HandoffTransport(args.state_dir, os.environ.get(ENV_NAMESPACE, "").strip())
    opened = open_endpoint(args)
    if isinstance(opened, str):
        return fail(opened)
    endpoint = opened
    endpoint_file: Path | None = None
    supervisor = GreengrassSupervisor(
        transport,
        args.device_id,
        args.state_dir,
        pem,
        providers=[p.strip() for p in args.providers.split(",") if p.strip()],
        sync_seconds=args.sync_seconds,
        report_seconds=args.report_seconds,
        infer_interval=args.infer_interval,
        synthetic_traffic=args.synthetic,
        registry=endpoint.registry,
        trust_for=lambda model: trusted_metadata(args, root, model),
        # the nucleus's IPC, which the agent component's recipe passes into the container: deployments wait for the
        # device's maintenance windows and its applications' deferrals (docs/aws.md, "Maintenance windows")
        deferrer=UpdateDeferrer.from_greengrass_environment,
    )
    try:
        endpoint.start()
        endpoint_file = write_endpoint_file(args.state_dir, endpoint, [])
        supervisor.run(stop)
    finally:
        supervisor.close()
        endpoint.close()
        if endpoint_file is not None:
            endpoint_file.unlink(missing_ok=True)
        transport.close()
    return EXIT_OK


def run_iotedge(args: argparse.Namespace, stop: threading.Event) -> int:
    """Every model the module twin names (or only --model), one DeviceAgent each, all on one endpoint."""
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
    opened = open_endpoint(args)
    if isinstance(opened, str):
        transport.close()
        return fail(opened)
    endpoint = opened
    endpoint_file: Path | None = None
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
            synthetic_traffic=args.synthetic,
            registry=endpoint.registry,
        )
        endpoint.start()
        endpoint_file = write_endpoint_file(args.state_dir, endpoint, [])
        try:
            supervisor.run(stop)
        finally:
            supervisor.close()
    finally:
        endpoint.close()
        if endpoint_file is not None:
            endpoint_file.unlink(missing_ok=True)
        transport.close()
    return EXIT_OK


def console() -> None:
    """The `edgefleet-agent` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console()
