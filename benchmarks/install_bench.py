"""Device install benchmark: what a device installs with the agent alone, against today's full install.

In fresh virtualenvs (one per row, recreated every run, with no pip of their own so that site-packages holds
exactly what was installed; pip's cache is reused), installs

    ./agent                  the agent alone (what `pip install ./agent` gives a device)
    ./agent[greengrass]      + boto3, for --transport greengrass
    ./agent[iotedge]         + azure-iot-device, for --transport iotedge
    ./agent .                the controller with everything (baseline): what a device got before the split

all with `-c constraints.txt` (the same versions on every row, so the rows differ only in what is installed),
and reports for each: site-packages on disk (MiB, as `du` counts, bytecode pip compiled included), the number
of distributions, the agent's import time (the total of `python -X importtime -c "import edgefleet_agent.__main__,
edgefleet_agent.core"`) and the wall time of `edgefleet-agent --help`, medians of --runs runs interleaved
across the venvs after one warm-up each; ratios against the full install measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "install.json"
IMPORT = "import edgefleet_agent.__main__, edgefleet_agent.core"
ROWS = [  # name, what pip installs (relative to the repository)
    ("agent", ["./agent"]),
    ("agent[greengrass]", ["./agent[greengrass]"]),
    ("agent[iotedge]", ["./agent[iotedge]"]),
    ("full (agent + controller)", ["./agent", "."]),
]
BASELINE = ROWS[-1][0]


def du_bytes(path: Path) -> int:
    """Bytes on disk under path, as `du` counts them (allocated blocks, each hard-linked file once)."""
    seen, total = set(), 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def install(venv: Path, targets: list[str], constraints: bool) -> float:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "--python",
        str(venv / "bin" / "python"),
        "install",
        "--quiet",
        *(["-c", "constraints.txt"] if constraints else []),
        *targets,
    ]
    t0 = perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"install failed: {' '.join(cmd)}")
    return perf_counter() - t0


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python3*/site-packages")
    return sp


def count_distributions(venv: Path) -> int:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(len(list(m.distributions())))"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=venv,
    ).stdout
    return int(out)


def import_time_ms(venv: Path) -> float:
    """Total of -X importtime's self times (every module the import loads, interpreter start-up's included)."""
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-X", "importtime", "-c", IMPORT],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=venv,
    )
    total_us = 0
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            first = line.split(":", 1)[1].split("|")[0].strip()
            if first.isdigit():
                total_us += int(first)
    return total_us / 1000


def help_time_ms(venv: Path) -> float:
    t0 = perf_counter()
    subprocess.run([str(venv / "bin" / "edgefleet-agent"), "--help"], capture_output=True, check=True, env=clean_env(), cwd=venv)
    return (perf_counter() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="import / --help timings per venv (median reported)")
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "edgefleet" / "install-bench")
    ap.add_argument("--no-constraints", action="store_true", help="let pip resolve freely (rows may then differ in versions)")
    args = ap.parse_args()
    py = Path(sys.executable)
    shown = py.relative_to(REPO) if py.is_relative_to(REPO) else py
    reproduce = f"{shown} benchmarks/install_bench.py --runs {args.runs}" + (" --no-constraints" if args.no_constraints else "")
    print(f"$ {reproduce}")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"load average {os.getloadavg()[0]:.2f}, {'constrained by constraints.txt' if not args.no_constraints else 'unconstrained'}; "
        f"venvs in {args.workdir}"
    )

    rows: dict[str, dict] = {}
    for name, targets in ROWS:
        venv = args.workdir / name.split(" ")[0].replace("[", "-").replace("]", "")
        print(f"installing {name}: pip install {' '.join(targets)} ...", flush=True)
        seconds = install(venv, targets, not args.no_constraints)
        rows[name] = {
            "pip_install": " ".join(targets),
            "venv": str(venv),
            "install_s": round(seconds, 1),
            "site_packages_mib": round(du_bytes(site_packages(venv)) / 2**20, 1),
            "distributions": count_distributions(venv),
            "import_ms": [],
            "help_ms": [],
        }

    for venv in (Path(r["venv"]) for r in rows.values()):  # warm-up: page cache, nothing recorded
        import_time_ms(venv), help_time_ms(venv)
    for _ in range(args.runs):  # interleaved, so background load hits every row
        for r in rows.values():
            r["import_ms"].append(round(import_time_ms(Path(r["venv"])), 1))
            r["help_ms"].append(round(help_time_ms(Path(r["venv"])), 1))
    for r in rows.values():
        r["import_ms_median"] = statistics.median(r["import_ms"])
        r["help_ms_median"] = statistics.median(r["help_ms"])

    base = rows[BASELINE]
    header = ("install", "site-packages", "ratio", "dists", "ratio", "import (ms)", "ratio", "--help (ms)", "ratio")
    table = []
    for name, r in rows.items():
        table.append(
            (
                name,
                f"{r['site_packages_mib']:.1f} MiB",
                f"{r['site_packages_mib'] / base['site_packages_mib']:.3f}",
                str(r["distributions"]),
                f"{r['distributions'] / base['distributions']:.3f}",
                f"{r['import_ms_median']:.0f}",
                f"{r['import_ms_median'] / base['import_ms_median']:.2f}",
                f"{r['help_ms_median']:.0f}",
                f"{r['help_ms_median'] / base['help_ms_median']:.2f}",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    print()
    for row in [header, *table]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(
        f"\nratios against '{BASELINE}' (same run); import: -X importtime total of `{IMPORT}`, "
        f"medians of {args.runs} interleaved runs; install times (warm pip cache, one sample): "
        + ", ".join(f"{n} {r['install_s']:.0f}s" for n, r in rows.items())
    )

    result = {
        "reproduce": reproduce,
        "date": date.today().isoformat(),
        "baseline": BASELINE,
        "constraints": not args.no_constraints,
        "import_statement": IMPORT,
        "runs": args.runs,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
