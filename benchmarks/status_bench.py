"""Status benchmark: `edgefleet status` on AWS and Azure at 1,000 and 10,000 devices, against the test doubles.

    python benchmarks/status_bench.py                      # 1,000 and 10,000 devices, both clouds
    python benchmarks/status_bench.py --devices 1000 --page 100

What it counts: every request the status reader sends (retries included) and the wall time of one read, with the
stack's three rings (canary 1%, early 10%, broad the rest). AWS: STS, S3 and the tagging API are moto; fleet indexing's
aggregations and Greengrass v2 are tests/aws/aws_fleet_index.py, behind botocore's request and response validation.
Azure: the local IoT Hub of tests/azure/azure_testkit.py over HTTP, answering at most --page rows a page. Each device
reports one of three versions (a tenth on an old one, a tenth never reported), so GROUP BY answers three rows a ring.

The baseline, in the same run: what one call per device would cost (Greengrass's ListInstalledComponents per core
device on AWS; a twin GET per device on Azure), i.e. devices + rings requests. The target: the reader's requests do
not change between 1,000 and 10,000 devices (they grow with rings and pages only). Writes benchmarks/out/status_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent"), str(ROOT / "tests" / "aws"), str(ROOT / "tests" / "azure")]


def shares(devices: int) -> dict[str, int]:
    canary, early = max(1, devices // 100), max(1, devices // 10)
    return {"canary": canary, "early": early, "broad": devices - canary - early}


def version(i: int) -> str | None:
    return None if i % 10 == 9 else "0.9.0" if i % 10 == 8 else "1.0.0"


def aws_run(devices: int, graph: dict) -> dict:
    import boto3
    from aws_fleet_index import Deployments, FleetIndex
    from moto import mock_aws

    from components.aws import status as aws_status
    from edgefleet.config import load_stack
    from edgefleet_agent.contract import greengrass as gg

    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        os.environ[k] = v
    os.environ.pop(aws_status.BUCKET_ENV, None)
    region, stack = "eu-west-1", "aws-dev"
    with mock_aws():
        s3 = boto3.client("s3", region_name=region)
        s3.create_bucket(Bucket="models-bench", CreateBucketConfiguration={"LocationConstraint": region})
        s3.put_bucket_tagging(Bucket="models-bench", Tagging={"TagSet": [{"Key": "edgefleet:stack", "Value": stack}]})
        s3.put_object(
            Bucket="models-bench", Key="rollouts/detector/r.json", Body=json.dumps({"version": "1.0.0", "status": "succeeded", "rings": []})
        )
        iot, greengrass = boto3.client("iot", region_name=region), boto3.client("greengrassv2", region_name=region)
        index, deployments = FleetIndex(), Deployments()
        index.attach(iot)
        deployments.attach(greengrass)
        shadow = gg.status_shadow("detector")
        for ring, n in shares(devices).items():
            deployments.set(
                f"arn:aws:iot:{region}:123456789012:thinggroup/edgefleet-aws-dev-detector-{ring}",
                {"edgefleet.aws-dev.detector.Model": {"componentVersion": "1.0.0"}},
            )
            for i in range(n):
                attrs = {"site": "plant-a", **({"ring": ring} if ring != "broad" else {})}
                v = version(i)
                reported = {shadow: gg.status_shadow_document(v, "s", "ok", "r", ring, 0)["state"]["reported"]} if v else None
                index.add(f"{ring}-{i}", "edgefleet-aws-dev-device", attrs, shadows=reported)

        class Clients:
            made = {"sts": boto3.client("sts", region_name=region), "s3": s3, "iot": iot, "greengrassv2": greengrass}
            made["resourcegroupstaggingapi"] = boto3.client("resourcegroupstaggingapi", region_name=region)

            def get(self, service: str):
                return self.made[service]

        cfg, source = load_stack(ROOT, stack)
        caller = aws_status.Caller(sleep=lambda s: None)
        start = time.perf_counter()
        out = aws_status.read_status(ROOT, cfg, source, stack, graph, clients=Clients(), caller=caller)
        wall = time.perf_counter() - start
    assert not out["gaps"], out["gaps"]
    assert sum(r["devices"] for r in out["rings"]) == devices
    return {"requests": caller.total, "by_call": dict(caller.calls), "wall_seconds": round(wall, 3), "rings": len(out["rings"])}


def azure_run(devices: int, graph: dict, page: int) -> dict:
    from azure_testkit import HUB_HOST, KEY, POLICY, FakeIotHub, SimDevice

    from components.azure import status as az_status
    from components.azure.configurations import HubClient
    from components.azure.hub import AzureHub, MemoryProgressStore
    from components.rollout.types import RingTarget
    from edgefleet_agent.contract.state import DesiredModel

    hub = FakeIotHub().start()
    try:
        hub.page_size_cap = page
        [spec] = az_status.rings_of(graph)
        for ring, n in shares(devices).items():
            for i in range(n):
                d = f"{ring}-{i:05d}"
                hub.devices[d] = SimDevice(tags={"group": "cameras", **({"ring": ring} if ring != "broad" else {})})
                if version(i):
                    hub.devices[d].reported = {"models": {"detector": {"version": version(i), "ring": f"detector.{ring}", "status": "ok"}}}
        client = HubClient(HUB_HOST, POLICY, KEY, hub.endpoint)
        model = DesiredModel(
            model="detector",
            version="1.0.0",
            sha256="1" * 64,
            size=1,
            uri="https://x/m.onnx",
            manifest="name: detector\n",
            signature="{}",
            rollout="detector@1.0.0+111111111111",
        )
        gate = AzureHub(client, {s.key: s for s in spec.rings}, MemoryProgressStore())
        for s in spec.rings:
            gate.set_desired(RingTarget(s.rollout, s.ring, s.index, s.key), model)
        hub.evaluate()
        before = len(hub.requests)
        start = time.perf_counter()
        out = az_status.read_status(ROOT, None, "bench", "azure-dev", graph, client=client, progress=MemoryProgressStore())
        wall = time.perf_counter() - start
        requests = hub.requests[before:]
    finally:
        hub.stop()
    assert not out["gaps"], out["gaps"]
    assert sum(r["devices"] for r in out["rings"]) == devices
    queries = sum(1 for r in requests if r["path"] == "/devices/query")
    return {"requests": len(requests), "queries_and_pages": queries, "wall_seconds": round(wall, 3), "rings": len(out["rings"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--page", type=int, default=100, help="rows a twin-query page holds on the local IoT Hub")
    args = ap.parse_args()
    print(f"reproduce: python benchmarks/status_bench.py --devices {' '.join(map(str, args.devices))} --page {args.page}")
    from edgefleet.synth import synth

    graphs = {"aws": synth(ROOT, "aws-dev"), "azure": synth(ROOT, "azure-dev")}
    rows = []
    for n in args.devices:
        a = aws_run(n, graphs["aws"])
        z = azure_run(n, graphs["azure"], args.page)
        rows.append({"devices": n, "aws": a, "azure": z, "per_device_baseline": n + a["rings"]})
    print(
        f"{'devices':>8} | {'AWS requests':>12} {'AWS wall s':>10} | {'Azure requests':>14} {'Azure wall s':>12} | {'one call a device':>17}"
    )
    for r in rows:
        print(
            f"{r['devices']:>8,} | {r['aws']['requests']:>12} {r['aws']['wall_seconds']:>10.3f} | "
            f"{r['azure']['requests']:>14} {r['azure']['wall_seconds']:>12.3f} | {r['per_device_baseline']:>17,}"
        )
    flat = len({(r["aws"]["requests"], r["azure"]["requests"]) for r in rows}) == 1
    print(f"AWS calls by operation: {rows[-1]['aws']['by_call']}")
    print("requests do not grow with devices" if flat else "requests grew with devices: target missed")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "status_bench.json").write_text(json.dumps({"rows": rows, "flat": flat}, indent=2))
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
