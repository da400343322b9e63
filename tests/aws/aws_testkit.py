"""Helpers for the AWS platform tests: the aws-dev graph under Pulumi mocks, broken project copies and the GDK
recipe validation. (A uniquely named module: several test folders have a conftest.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

PROJECT = Path(__file__).resolve().parents[2]
STACK = "aws-dev"
REGION = "eu-west-1"


# -- the graph ------------------------------------------------------------------------------------------------
class Graph:
    """The synthesised graph with the look-ups a reviewer would do by hand."""

    def __init__(self, graph: dict[str, Any]) -> None:
        self.raw = graph
        self.resources: list[dict[str, Any]] = graph["resources"]
        self.by_urn = {r["urn"]: r for r in self.resources}

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["type"] == type_]

    def one(self, type_: str, name: str | None = None) -> dict[str, Any]:
        found = [r for r in self.of_type(type_) if name is None or r["name"] == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r['name'] for r in found]}"
        return found[0]

    def named(self, name: str) -> dict[str, Any]:
        found = [r for r in self.resources if r["name"] == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def parent(self, r: dict[str, Any]) -> dict[str, Any] | None:
        return self.by_urn.get(r["parent"]) if r["parent"] else None

    def all_deps(self, r: dict[str, Any]) -> set[str]:
        return set(r["dependencies"]) | {u for us in r["property_dependencies"].values() for u in us}


def synth_graph(project: Path, stack: str = STACK) -> Graph:
    from edgefleet.synth import synth

    return Graph(synth(project, stack))


# -- project copies with an edited stack file ------------------------------------------------------------------
def project_copy(tmp_path: Path, edit: Callable[[dict[str, Any]], None] | None = None, stack: str = STACK) -> Path:
    """A copy of the project (Pulumi.yaml, models/, stacks/) whose stack file `edit` changes in place."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT / "Pulumi.yaml", root / "Pulumi.yaml")
    shutil.copytree(PROJECT / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(PROJECT / "stacks", root / "stacks")
    if edit is not None:
        path = root / "stacks" / f"Pulumi.{stack}.yaml"
        doc = yaml.safe_load(path.read_text())
        edit(doc["config"])
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


# -- AWS services moto does not have (Greengrass v2) or gets wrong (KMS Sign with MessageType=DIGEST) ------------
ACCOUNT = "123456789012"  # moto's default account


def emulate(client: Any, handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Answers operations of a real botocore client with `handlers[operation](params)`.

    botocore validates every request against the service model before the handler sees it (a malformed
    request raises ParamValidationError exactly as against AWS), and each response is validated against the
    operation's output shape, like botocore's Stubber does. Returns the list of (operation, params) calls.
    """
    import copy

    from botocore.awsrequest import AWSResponse
    from botocore.validate import ParamValidator

    calls: list[tuple[str, dict[str, Any]]] = []
    service_id = client.meta.service_model.service_id.hyphenize()
    slot = f"emulated-{id(calls)}"

    def capture(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        if model.name in handlers:
            context[slot] = copy.deepcopy(params)

    def answer(model: Any, context: dict[str, Any], **_: Any):
        if model.name not in handlers:
            return None
        params = context[slot]
        calls.append((model.name, params))
        response = handlers[model.name](params)
        report = ParamValidator().validate(response, model.output_shape) if model.output_shape is not None else None
        if report is not None and report.has_errors():
            raise AssertionError(f"emulated {model.name} response does not match the service model: {report.generate_report()}")
        return AWSResponse(None, 200, {}, None), response

    client.meta.events.register(f"before-parameter-build.{service_id}", capture)
    client.meta.events.register(f"before-call.{service_id}", answer)
    return calls


class FakeGreengrass:
    """Greengrass v2's deployment API over moto's IoT jobs: one active deployment per target (a new one supersedes
    it), each deployment backed by a continuous IoT job on the target thing group, as Greengrass does."""

    def __init__(self, greengrass: Any, iot: Any, on_create: Callable[[dict[str, Any], str], None] | None = None) -> None:
        self.iot = iot
        self.on_create = on_create  # the fleet: called with (request, IoT job id) for each new deployment
        self.deployments: dict[str, dict[str, Any]] = {}
        self.latest: dict[str, str] = {}
        self.calls = emulate(greengrass, {"CreateDeployment": self.create, "ListDeployments": self.list, "GetDeployment": self.get})
        self.tokens: dict[str, str] = {}

    def create(self, params: dict[str, Any]) -> dict[str, Any]:
        import datetime
        import uuid

        token = params.get("clientToken")
        if token and token in self.tokens:  # idempotent retry, as the API promises
            return {"deploymentId": self.tokens[token], "iotJobId": self.deployments[self.tokens[token]]["iotJobId"]}
        dep_id = str(uuid.uuid4())
        job_id = f"gg-{dep_id}"
        self.iot.create_job(jobId=job_id, targets=[params["targetArn"]], document="{}", targetSelection="CONTINUOUS")
        target = params["targetArn"]
        if target in self.latest:
            self.deployments[self.latest[target]]["isLatestForTarget"] = False
        self.deployments[dep_id] = {
            "targetArn": target,
            "revisionId": str(len(self.deployments) + 1),
            "deploymentId": dep_id,
            "deploymentName": params.get("deploymentName", ""),
            "deploymentStatus": "ACTIVE",
            "iotJobId": job_id,
            "iotJobArn": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/{job_id}",
            "components": params.get("components", {}),
            "deploymentPolicies": params.get("deploymentPolicies", {}),
            "iotJobConfiguration": params.get("iotJobConfiguration", {}),
            "creationTimestamp": datetime.datetime.now(datetime.timezone.utc),
            "isLatestForTarget": True,
            "tags": params.get("tags", {}),
        }
        self.latest[target] = dep_id
        if token:
            self.tokens[token] = dep_id
        if self.on_create is not None:
            self.on_create(params, job_id)
        return {"deploymentId": dep_id, "iotJobId": job_id, "iotJobArn": self.deployments[dep_id]["iotJobArn"]}

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        keys = ("targetArn", "revisionId", "deploymentId", "deploymentName", "creationTimestamp", "deploymentStatus", "isLatestForTarget")
        found = [
            d
            for d in self.deployments.values()
            if d["targetArn"] == params.get("targetArn") and (params.get("historyFilter") != "LATEST_ONLY" or d["isLatestForTarget"])
        ]
        return {"deployments": [{k: d[k] for k in keys} for d in found]}

    def get(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(self.deployments[params["deploymentId"]])

    def created(self) -> list[dict[str, Any]]:
        return [p for op, p in self.calls if op == "CreateDeployment"]


class LocalKms:
    """KMS GetPublicKey and Sign as real KMS answers them, for a P-256 key held in the test: Sign with
    MessageType=DIGEST signs the given 32 bytes as a SHA-256 digest (what moto does not do)."""

    def __init__(self, kms: Any, key_id: str = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/00000000-1111-2222-3333-444444444444") -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = key_id
        self.calls = emulate(kms, {"GetPublicKey": self.get_public_key, "Sign": self.sign})

    def get_public_key(self, params: dict[str, Any]) -> dict[str, Any]:
        from cryptography.hazmat.primitives import serialization

        der = self.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return {
            "KeyId": self.key_id,
            "PublicKey": der,
            "KeySpec": "ECC_NIST_P256",
            "CustomerMasterKeySpec": "ECC_NIST_P256",
            "KeyUsage": "SIGN_VERIFY",
            "SigningAlgorithms": ["ECDSA_SHA_256"],
        }

    def sign(self, params: dict[str, Any]) -> dict[str, Any]:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        assert params["MessageType"] == "DIGEST" and params["SigningAlgorithm"] == "ECDSA_SHA_256", params
        message = params["Message"]
        return {
            "KeyId": self.key_id,
            "SigningAlgorithm": "ECDSA_SHA_256",
            "Signature": self.key.sign(message, ec.ECDSA(Prehashed(hashes.SHA256()))),
        }

    def public_key(self):
        return self.key.public_key()


class Clients:
    """What AwsHub expects: one client per service (moto-backed or emulated)."""

    def __init__(self, **clients: Any) -> None:
        self.__dict__.update(clients)


def moto_job(job_id: str):
    from moto.iot.models import iot_backends

    return iot_backends[ACCOUNT][REGION].jobs[job_id]


def devices_report(job_id: str, statuses: dict[str, str]) -> None:
    """What the fleet does to an IoT job: each device's execution moves to a status, and the job's counts follow."""
    from moto.iot.models import FakeJobExecution, iot_backends

    backend = iot_backends[ACCOUNT][REGION]
    for key in [k for k, e in backend.job_executions.items() if k[0] == job_id and ":thinggroup/" in e.thing_arn]:
        del backend.job_executions[key]  # moto's execution for the group ARN itself
    for thing, status in statuses.items():
        backend.job_executions[(job_id, thing)] = FakeJobExecution(job_id, f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/{thing}", status=status)
    counts = {s: 0 for s in ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")}
    for (jid, _), e in backend.job_executions.items():
        if jid == job_id:
            counts[e.status] += 1
    details = backend.jobs[job_id].job_process_details
    details.update(
        {
            "numberOfQueuedThings": counts["QUEUED"],
            "numberOfInProgressThings": counts["IN_PROGRESS"],
            "numberOfSucceededThings": counts["SUCCEEDED"],
            "numberOfFailedThings": counts["FAILED"],
            "numberOfRejectedThings": counts["REJECTED"],
            "numberOfTimedOutThings": counts["TIMED_OUT"],
            "numberOfCanceledThings": counts["CANCELED"],
            "numberOfRemovedThings": counts["REMOVED"],
        }
    )


# -- CloudWatch percentiles, which moto does not compute ----------------------------------------------------------
def moto_percentiles(monkeypatch: Any) -> None:
    """Teaches moto's CloudWatch the pNN statistics over raw values (data filed with Values and Counts, as agents file
    request latencies), by nearest rank as CloudWatch computes them on raw data points; other statistics unchanged."""
    import math
    import re

    from moto.cloudwatch.models import Statistics

    real = Statistics.get_statistics_for_type

    def with_percentiles(self: Any, stat: str) -> Any:
        m = re.fullmatch(r"p(\d+(?:\.\d+)?)", stat)
        if m is None:
            return real(self, stat)
        values = sorted(self.metric_single_values_list)
        if not values:
            return None
        return values[max(0, math.ceil(float(m.group(1)) / 100 * len(values)) - 1)]

    monkeypatch.setattr(Statistics, "get_statistics_for_type", with_percentiles)
