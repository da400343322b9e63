"""Update-metadata benchmark: what TUF costs a device per update, against downloading the artifact itself.

    python benchmarks/trust_bench.py                      # 16 MiB artifact, 7 updates, 20 versions listed
    python benchmarks/trust_bench.py --size-mib 64 --updates 5 --versions 50

One local HTTP server (127.0.0.1, in its own process) serves a TUF repository written by the publisher's code
(components/trust/, a root key and an online key, both P-256) and two artifacts: random bytes of --size-mib, and the
2 KB sample model (models/samples/detector-1.0.0.onnx). For each update the publisher adds a version (new targets,
snapshot and timestamp, what `edgefleet up` writes), then the device does what it does before an install:

  metadata   TrustedMetadata.check (edgefleet_agent/trust.py): an ngclient refresh over HTTP (root chain probe,
             timestamp, snapshot, targets) with the device's cache from its previous update, and the target lookup
             and comparison with the desired state. Time, and bytes fetched (counted in the fetcher).
  artifact   the agent's own download (edgefleet_agent/download.py): streamed over HTTP and hashed.

Reported: the medians, and metadata / artifact for time and for bytes (goal: <= 2% for an artifact of >= 10 MB); for
the 2 KB sample, the absolute figures (there the metadata is larger than the model, and says so). The server runs in
its own process, twice: unthrottled (loopback: the artifact arrives at memory speed, so the time ratio is the metadata's
CPU against a memcpy, reported as such) and at a device's link rate (--link-mbit, default 50 Mbit/s, applied to every
byte it serves, metadata and artifact alike), which is what the goal is judged on: a device downloads over its link. The first refresh
of a device with an empty cache (which also fetches root) is reported apart, as "cold". Targets list --versions
versions, as a stack's would after that many releases. Writes benchmarks/out/trust_bench.json.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "out" / "trust_bench.json"
SAMPLE = ROOT / "models" / "samples" / "detector-1.0.0.onnx"
GOAL = 0.02
RELEASES = itertools.count()

from components.local.signer import LocalKeySigner, create_key_file  # noqa: E402
from components.trust.repository import TrustRepository  # noqa: E402
from components.trust.storage import DirectoryStorage  # noqa: E402
from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest  # noqa: E402
from edgefleet_agent.download import download  # noqa: E402
from edgefleet_agent.trust import TrustedMetadata, UrlFetcher  # noqa: E402


class CountingFetcher(UrlFetcher):
    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        for chunk in super()._fetch(url):
            self.bytes += len(chunk)
            yield chunk


class Throttled(http.server.SimpleHTTPRequestHandler):
    """Serves files at `rate` bytes per second (0: as fast as it can), in 64 KiB writes."""

    protocol_version = "HTTP/1.0"
    rate = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        start, sent = time.perf_counter(), 0
        while chunk := source.read(1 << 16):
            outputfile.write(chunk)
            sent += len(chunk)
            if self.rate:
                ahead = sent / self.rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)


def server_main(directory: str, port_file: str, rate: float) -> None:
    """The store's web server, in its own process (as it is on another machine): prints nothing, writes its port."""
    handler = functools.partial(type("H", (Throttled,), {"rate": rate}), directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def serve(directory: Path, rate: float, work: Path) -> tuple[subprocess.Popen, str]:
    port_file = work / f"port-{rate}"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(directory), "--port-file", str(port_file), "--rate", str(rate)])
    deadline = time.time() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the benchmark's HTTP server did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def measure(store: Path, base: str, repo: TrustRepository, artifact: Path, updates: int, work: Path, label: str) -> dict:
    size, sha = artifact.stat().st_size, sha256_file(artifact)
    fetcher = CountingFetcher()
    device = TrustedMetadata(
        (store / "tuf" / "metadata" / "1.root.json").read_bytes(), f"{base}/tuf/metadata/", work / f"dev-{label}", fetcher=fetcher
    )
    rows = []
    for _ in range(updates + 1):
        version = f"2.{next(RELEASES)}.0"  # a new version every update, across measurements: every update publishes
        manifest = f"name: detector\nversion: {version}\nsha256: {sha}\n".encode()
        repo.add_targets([TargetIdentity("detector", version, sha, size, manifest_digest(manifest))])
        fetcher.bytes = 0
        t0 = time.perf_counter()
        device.check("detector", version, sha, size, manifest)
        meta_s, meta_b = time.perf_counter() - t0, fetcher.bytes
        dest = work / f"{label}.part"
        t0 = time.perf_counter()
        got = download(f"{base}/{artifact.name}", dest, expected_size=size)
        art_s = time.perf_counter() - t0
        assert got == sha
        dest.unlink()
        rows.append({"metadata_s": meta_s, "metadata_bytes": meta_b, "artifact_s": art_s, "artifact_bytes": size})
    cold, warm = rows[0], rows[1:]
    med = {k: statistics.median(r[k] for r in warm) for k in warm[0]}
    return {
        "artifact_bytes": size,
        "cold": cold,
        "median": med,
        "time_ratio": med["metadata_s"] / med["artifact_s"],
        "bytes_ratio": med["metadata_bytes"] / size,
        "runs": warm,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=16)
    ap.add_argument("--updates", type=int, default=7)
    ap.add_argument("--versions", type=int, default=20, help="versions already listed in the signed targets")
    ap.add_argument("--link-mbit", type=float, default=50.0, help="the device link the goal is judged on (0: none)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        server_main(args.serve, args.port_file, args.rate)
        return 0
    print(
        f"reproduce: python benchmarks/trust_bench.py --size-mib {args.size_mib} --updates {args.updates} "
        f"--versions {args.versions} --link-mbit {args.link_mbit:g}"
    )
    links = {"loopback": 0.0} | ({f"{args.link_mbit:g} Mbit/s": args.link_mbit * 1e6 / 8} if args.link_mbit else {})
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / "store"
        store.mkdir()
        big = store / "artifact.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        small = store / "sample.onnx"
        small.write_bytes(SAMPLE.read_bytes())
        online = LocalKeySigner(create_key_file(work / "online.pem"))
        root = LocalKeySigner(create_key_file(work / "root.pem"))
        repo = TrustRepository(DirectoryStorage(store), online)
        history = [TargetIdentity("detector", f"1.{i}.0", f"{i:064x}", 2048 + i, f"{i:064x}") for i in range(args.versions)]
        repo.init([root], 1, history)
        for label, rate in links.items():
            proc, base = serve(store, rate, work)
            try:
                results[label] = {
                    "large": measure(store, base, repo, big, args.updates, work, f"large-{rate}"),
                    "sample": measure(store, base, repo, small, args.updates, work, f"sample-{rate}"),
                }
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    print(f"per update, median of {args.updates} (device cache warm; targets list {args.versions}+ versions); server in its own process")
    print(f"{'':38}{'metadata':>14}{'artifact':>16}{'ratio':>10}")
    for label, r in results.items():
        large, sample = r["large"], r["sample"]
        lm, sm = large["median"], sample["median"]
        print(f"[{label}]")
        print(
            f"  {args.size_mib} MiB artifact, time{'':13}{lm['metadata_s'] * 1000:>12.2f}ms{lm['artifact_s'] * 1000:>14.2f}ms{large['time_ratio']:>10.2%}"
        )
        print(
            f"  {args.size_mib} MiB artifact, bytes{'':12}{lm['metadata_bytes']:>14,}{lm['artifact_bytes']:>16,}{large['bytes_ratio']:>10.3%}"
        )
        print(
            f"  2 KB sample, time{'':17}{sm['metadata_s'] * 1000:>12.2f}ms{sm['artifact_s'] * 1000:>14.2f}ms{sample['time_ratio']:>9.1f}x"
        )
        print(f"  2 KB sample, bytes{'':16}{sm['metadata_bytes']:>14,}{sm['artifact_bytes']:>16,}{sample['bytes_ratio']:>9.1f}x")
        c = large["cold"]
        print(f"  cold (first refresh, empty cache): {c['metadata_s'] * 1000:.2f} ms, {c['metadata_bytes']:,} bytes")
    judged = results[f"{args.link_mbit:g} Mbit/s"]["large"] if args.link_mbit else results["loopback"]["large"]
    ok = judged["time_ratio"] <= GOAL and judged["bytes_ratio"] <= GOAL and args.size_mib * (1 << 20) >= 10_000_000
    where = f"a {args.link_mbit:g} Mbit/s device link" if args.link_mbit else "loopback"
    print(f"goal: metadata <= {GOAL:.0%} of the artifact's download (>= 10 MB), time and bytes, on {where}: {'met' if ok else 'MISSED'}")
    print("(on loopback the artifact arrives at memory speed, so the time ratio there is the metadata's CPU against a memcpy)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {"args": vars(args), "goal": GOAL, "met": ok, "python": sys.version.split()[0], "machine": platform.machine(), **results},
            indent=2,
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
