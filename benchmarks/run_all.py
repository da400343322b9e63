"""Runs every benchmark in turn (`make bench`). Each prints its own reproduce command and table and writes
benchmarks/out/<name>.json; run on an otherwise idle machine. Exit status: non-zero if any target is missed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("artifact", ["artifact_bench.py"]),  # 1 GiB hash+sign+verify vs sha256sum, peak memory
    ("synth", ["synth_bench.py"]),  # 1,000 declarations vs bare Pulumi mock registration
    ("agent", ["agent_bench.py"]),  # agent inference overhead, swap pause, failed inferences
    ("rollout", ["rollout_bench.py", "--runs", "3"]),  # 1,000-device rollout: time beyond the soaks
    ("install", ["install_bench.py"]),  # device install (agent, per extra) vs the full install: size, imports
    ("serving", ["serving_bench.py"]),  # inference endpoint vs in-process session.run, telemetry cost, shadow cost
    # beside MLServer 1.7.1 on the same models; builds its own venv once, prints "skipped: <reason>" if it cannot
    ("mlserver", ["mlserver_bench.py", "--skip-if-unavailable"]),
    ("trust", ["trust_bench.py"]),  # TUF metadata per update vs a 16 MiB artifact's download (loopback and a 50 Mbit/s link)
    ("status", ["status_bench.py"]),  # `edgefleet status` on AWS/Azure doubles at 1,000 and 10,000 devices: requests, wall time
    ("delta", ["delta_bench.py"]),  # patch vs full artifact of a 20 MB model: bytes, create/apply time and memory
]


def main() -> int:
    failed = []
    for name, args in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]]).returncode != 0:
            failed.append(name)
    print(f"\n{'all targets met' if not failed else 'missed or failed: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
