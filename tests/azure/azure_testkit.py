"""A local stand-in for IoT Hub's service API and Key Vault's key API, on 127.0.0.1, for the Azure tests.

The hub implements what Microsoft documents for the calls edgefleet makes: SAS authentication, configurations
(PUT create -> 201 or 409 when the id exists; PUT with If-Match -> 200, 412 on a stale ETag, 404 when missing,
400 when the immutable content changes; GET 200/404; DELETE with If-Match -> 204/404/412), twin queries with
x-ms-continuation paging and GROUP BY over one property (the rows `edgefleet status` counts versions with), a
query quota answering 429 with Retry-After (`query_quota` requests, pages included, per `quota_window` seconds, as IoT
Hub's 20 queries a minute per S1 unit), and error bodies of the form {"Message": "ErrorCode:<code>;<text>"}. Faults (429 with
Retry-After, 5xx) are injected per call. Devices can be simulated: the hub applies configurations the way IoT
Hub layers them (the highest-priority base, then layers above it by priority and creation time) and marks them
Applied on the device's $edgeAgent twin (except for `unapplied` devices, which it has not reached yet); the
runtime reports lastDesiredStatus (500 for a version in `runtime_fails`, and then the agent's report does not
change), the agents report through the agent twin contract (healthy metrics unless a device's `metrics` say otherwise
for a version; the build its `variant` names, if any), and `evaluate()` computes the system metrics
(targeted, applied, reported success and failure) and custom metrics by running the configurations' own queries
(three-valued logic: comparisons with a missing property are undefined). Each device's agent module twin holds the
desired properties IoT Hub computes from the applied base and layers (`SimDevice.agent_desired`), and a
`SimModuleClient` gives the agent's IoT Edge transport that twin and, on a change, the whole new desired properties
as its notification (no nulls for what a change dropped). The Key Vault can answer 403
ForbiddenByRbac for a while, as a vault does until a new role assignment reaches it.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from components.azure.configurations import verify_sas
from components.azure.manifest import AGENT_MODULE, effective_manifest
from edgefleet_agent.contract.iotedge import desired_from_agent
from edgefleet_agent.contract.signing import der_to_raw

HUB_HOST = "ef-test.azure-devices.net"
POLICY = "edgefleet-deployer"
KEY = base64.b64encode(b"local-test-policy-key-0123456789").decode()


# -- a tiny evaluator for the IoT Hub query language subset edgefleet generates --------------------------------------
UNDEF = object()
TOKEN = re.compile(
    r"\s*(?:(?P<str>'[^']*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<op><>|!=|>=|<=|=|>|<)|(?P<p>[(),])|(?P<word>[A-Za-z_$][A-Za-z0-9_$.\[\]-]*))"
)


def tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"cannot parse query at {text[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def resolve(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if part.startswith("[[") and part.endswith("]]"):  # configurations.[[<id>]].status: an id as a key
            part = part[2:-2]
        if not isinstance(node, dict) or part not in node:
            return UNDEF
        node = node[part]
    return node


def _and(a: Any, b: Any) -> Any:
    if a is False or b is False:
        return False
    return UNDEF if a is UNDEF or b is UNDEF else True


def _or(a: Any, b: Any) -> Any:
    if a is True or b is True:
        return True
    return UNDEF if a is UNDEF or b is UNDEF else False


class Condition:
    """expr := term (OR term)*; term := factor (AND factor)*; factor := NOT factor | (expr) | IS_DEFINED(p) | operand op operand."""

    def __init__(self, text: str) -> None:
        self.toks = tokens(text)
        self.i = 0
        self.tree = self._expr()
        if self.i != len(self.toks):
            raise ValueError(f"trailing tokens in {text!r}: {self.toks[self.i :]}")

    def _peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _take(self) -> tuple[str, str]:
        self.i += 1
        return self.toks[self.i - 1]

    def _kw(self, word: str) -> bool:
        t = self._peek()
        if t and t[0] == "word" and t[1].upper() == word:
            self.i += 1
            return True
        return False

    def _expr(self):
        node = self._term()
        while self._kw("OR"):
            node = ("or", node, self._term())
        return node

    def _term(self):
        node = self._factor()
        while self._kw("AND"):
            node = ("and", node, self._factor())
        return node

    def _factor(self):
        if self._kw("NOT"):
            return ("not", self._factor())
        t = self._peek()
        if t == ("p", "("):
            self._take()
            node = self._expr()
            assert self._take() == ("p", ")")
            return node
        if self._kw("IS_DEFINED"):
            assert self._take() == ("p", "(")
            path = self._take()[1]
            assert self._take() == ("p", ")")
            return ("defined", path)
        left = self._operand()
        op = self._take()
        if op[0] != "op":
            raise ValueError(f"expected a comparison, got {op}")
        return ("cmp", op[1], left, self._operand())

    def _operand(self):
        kind, value = self._take()
        if kind == "str":
            return ("lit", value[1:-1])
        if kind == "num":
            return ("lit", float(value))
        return ("path", value)

    def eval(self, doc: dict[str, Any]) -> Any:
        return self._eval(self.tree, doc)

    def _eval(self, node, doc):
        kind = node[0]
        if kind == "or":
            return _or(self._eval(node[1], doc), self._eval(node[2], doc))
        if kind == "and":
            return _and(self._eval(node[1], doc), self._eval(node[2], doc))
        if kind == "not":
            v = self._eval(node[1], doc)
            return UNDEF if v is UNDEF else not v
        if kind == "defined":
            return resolve(doc, node[1]) is not UNDEF
        _, op, a, b = node
        x = a[1] if a[0] == "lit" else resolve(doc, a[1])
        y = b[1] if b[0] == "lit" else resolve(doc, b[1])
        if x is UNDEF or y is UNDEF:
            return UNDEF
        try:
            return {"=": x == y, "!=": x != y, "<>": x != y, ">": x > y, "<": x < y, ">=": x >= y, "<=": x <= y}[op]
        except TypeError:
            return UNDEF


def matches(condition: str, doc: dict[str, Any]) -> bool:
    return Condition(condition).eval(doc) is True


QUERY = re.compile(
    r"^SELECT\s+(?:TOP\s+(\d+)\s+)?(.*?)\s+FROM\s+(devices\.modules|devices)\s+WHERE\s+(.*?)(?:\s+GROUP\s+BY\s+([A-Za-z0-9_$.]+))?$",
    re.S | re.I,
)


def run_query(sql: str, devices: list[dict[str, Any]], modules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    m = QUERY.match(sql.strip())
    if not m:
        raise ValueError(f"unsupported query {sql!r}")
    top, projection, collection, where, group_by = m.groups()
    cond = Condition(where)
    docs = [d for d in (modules if collection == "devices.modules" else devices) if cond.eval(d) is True]
    items = [p.strip() for p in projection.split(",")]
    agg = [re.match(r"^(COUNT|SUM|MAX|MIN|AVG)\((.*)\)\s+AS\s+(\w+)$", p, re.I) for p in items]
    if group_by:
        # IoT Hub's GROUP BY: one row per value of the grouping property (a group of documents without it carries
        # no such key); the projection is that property and COUNT()
        groups: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            groups.setdefault(json.dumps(resolve(d, group_by) if resolve(d, group_by) is not UNDEF else None), []).append(d)
        rows = []
        for key, members in sorted(groups.items()):
            row: dict[str, Any] = {}
            for p, a in zip(items, agg, strict=True):
                if a:
                    row[a.group(3)] = len(members)
                else:
                    pm = re.match(r"^(.*?)\s+AS\s+(\w+)$", p, re.I)
                    path, alias = (pm.group(1), pm.group(2)) if pm else (p, p.split(".")[-1])
                    if path != group_by:
                        raise ValueError(f"GROUP BY {group_by}: cannot project {path}")
                    if json.loads(key) is not None:
                        row[alias] = json.loads(key)
            rows.append(row)
        return rows
    if all(agg):
        row = {}
        for a in agg:
            fn, path, alias = a.group(1).upper(), a.group(2), a.group(3)
            values = [v for v in (resolve(d, path) for d in docs) if v is not UNDEF] if path else []
            row[alias] = {
                "COUNT": len(docs),
                "SUM": sum(values) if values else None,
                "MAX": max(values) if values else None,
                "MIN": min(values) if values else None,
                "AVG": sum(values) / len(values) if values else None,
            }[fn]
        return [row]
    rows = []
    for d in docs:
        row = {}
        for p in items:
            pm = re.match(r"^(.*?)\s+AS\s+(\w+)$", p, re.I)
            path, alias = (pm.group(1), pm.group(2)) if pm else (p, p.split(".")[-1])
            v = resolve(d, path)
            if v is not UNDEF:
                row[alias] = v
        rows.append(row)
    return rows[: int(top)] if top else rows


# -- the fake IoT Hub -----------------------------------------------------------------------------------------------
@dataclass
class SimDevice:
    tags: dict[str, str]
    refuse: set[str] = field(default_factory=set)  # versions this device's agent reports as failed
    runtime_fails: dict[str, str] = field(default_factory=dict)  # version -> why its IoT Edge runtime cannot apply it
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> reported metrics other than the healthy defaults
    variant: str | None = None  # the build its agent serves of every version (fp32, int8, fp16); None: reports none
    reported: dict[str, Any] = field(default_factory=dict)
    # the agent module twin's desired properties as IoT Hub computes them from the applied base and layers, with the
    # $version IoT Hub gives them, and the module clients (SimModuleClient) connected to it
    agent_desired: dict[str, Any] = field(default_factory=lambda: {"$version": 1})
    module_clients: list[Any] = field(default_factory=list)
    edge_agent: dict[str, Any] = field(
        default_factory=lambda: {  # the $edgeAgent module twin, as IoT Hub keeps it
            "configurations": {},
            "properties": {"desired": {"$version": 1}, "reported": {}},
        }
    )
    _content: str = ""


EDGE_AGENT = "$edgeAgent"


def system_queries(config_id: str, target_condition: str) -> dict[str, str]:
    """The system metrics IoT Hub defines for an IoT Edge deployment, keyed by metric id as the REST API returns them."""
    applied = f"SELECT deviceId FROM devices.modules WHERE moduleId = '{EDGE_AGENT}' AND configurations.[[{config_id}]].status = 'Applied'"
    current = " AND properties.desired.$version = properties.reported.lastDesiredVersion AND properties.reported.lastDesiredStatus.code"
    return {
        "targetedCount": f"SELECT deviceId FROM devices WHERE {target_condition}",
        "appliedCount": applied,
        "reportedSuccessfulCount": f"{applied}{current} = 200",
        "reportedFailedCount": f"{applied}{current} != 200",
    }


class FakeIotHub:
    def __init__(self, host: str = HUB_HOST, keys: dict[str, str] | None = None) -> None:
        self.host = host
        self.keys = keys or {POLICY: KEY}
        self.configs: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, SimDevice] = {}
        self.faults: list[tuple[str, str, int, dict[str, str]]] = []  # (method, path prefix, status, headers)
        self.requests: list[dict[str, Any]] = []
        self.queries: list[str] = []  # every twin query, as sent
        self.timeline: list[tuple[str, str, list[str]]] = []  # (op, id, ids present after it)
        self.page_size_cap = 2
        self.unapplied: set[str] = set()  # devices IoT Hub has not applied deployments to yet
        # IoT Hub's query quota (20 a minute per S1/S2 unit): at most `query_quota` query requests (each page counts)
        # in any `quota_window` seconds, then 429 ThrottlingException with Retry-After until the window has room
        self.query_quota: int | None = None
        self.quota_window = 60.0
        self.query_times: list[float] = []
        self.throttled = 0
        self._etags = itertools.count(1)
        self._created = itertools.count(1)
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeIotHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, method: str, path: str, status: int, **headers: str) -> None:
        self.faults.append((method, path, status, headers))

    # device side ------------------------------------------------------------------------------------------------
    def device_doc(self, device_id: str) -> dict[str, Any]:
        return {"deviceId": device_id, "tags": self.devices[device_id].tags}

    def module_docs(self) -> list[dict[str, Any]]:
        """Module twins: each device's agent module and its $edgeAgent."""
        out = []
        for d, dev in sorted(self.devices.items()):
            out.append({"deviceId": d, "moduleId": AGENT_MODULE, "properties": {"reported": dev.reported}})
            out.append({"deviceId": d, "moduleId": EDGE_AGENT, **copy.deepcopy(dev.edge_agent)})
        return out

    def applied(self, device_id: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The base and the layers IoT Hub would merge for this device."""
        doc = self.device_doc(device_id)
        hits = [c for c in self.configs.values() if matches(c["targetCondition"], doc)]

        def order(c):
            return (c["priority"], c["_created"])

        bases = sorted((c for c in hits if "properties.desired" in c["content"]["modulesContent"].get("$edgeAgent", {})), key=order)
        if not bases:
            return None, []
        base = bases[-1]
        layers = sorted((c for c in hits if c is not base and c not in bases and c["priority"] > base["priority"]), key=order)
        return base, layers

    def apply(self) -> None:
        """IoT Hub applies the configurations to each device's twins (not to `unapplied` ones); its IoT Edge runtime
        reports lastDesiredStatus for the new desired state, and, unless the runtime failed, the agent reports through
        the agent twin contract."""
        with self.lock:
            for device_id, dev in self.devices.items():
                if device_id in self.unapplied:
                    continue
                base, layers = self.applied(device_id)
                desired = {}
                mc: dict[str, Any] = {}
                if base is not None:
                    mc = effective_manifest(base["content"]["modulesContent"], *(layer["content"]["modulesContent"] for layer in layers))
                    desired = mc.get(AGENT_MODULE, {}).get("properties.desired", {}).get("models", {})
                twin = dev.edge_agent
                twin["configurations"] = {c["id"]: {"status": "Applied"} for c in ([base, *layers] if base else [])}
                content = json.dumps(mc, sort_keys=True)
                if content != dev._content:
                    dev._content = content
                    twin["properties"]["desired"]["$version"] += 1
                agent_desired = copy.deepcopy(mc.get(AGENT_MODULE, {}).get("properties.desired", {}))
                if agent_desired != {k: v for k, v in dev.agent_desired.items() if k != "$version"}:
                    # a deployment sets the module twin's desired properties whole: what it no longer has is gone
                    dev.agent_desired = {**agent_desired, "$version": dev.agent_desired["$version"] + 1}
                    for client in dev.module_clients:
                        client.notify(copy.deepcopy(dev.agent_desired))
                broken = [dev.runtime_fails[data["version"]] for data in desired.values() if data.get("version") in dev.runtime_fails]
                twin["properties"]["reported"] = {
                    "lastDesiredVersion": twin["properties"]["desired"]["$version"],
                    "lastDesiredStatus": {"code": 500, "description": broken[0]} if broken else {"code": 200},
                }
                if broken:
                    continue  # the agent module did not get the new desired state: its report stays
                models = {}
                for key, data in desired.items():
                    d = desired_from_agent(data)
                    if d.version in dev.refuse:
                        models[key] = {
                            "status": "failed",
                            "failedVersion": d.version,
                            "error": f"refused {d.version}",
                            "ring": data["ring"],
                            "rollout": d.rollout,
                            "version": dev.reported.get("models", {}).get(key, {}).get("version", "0.0.0"),
                            **({"variant": dev.variant} if dev.variant else {}),
                        }
                    else:
                        models[key] = {
                            "status": "ok",
                            "version": d.version,
                            "sha256": d.sha256,
                            "ring": data["ring"],
                            "rollout": d.rollout,
                            "inferences": 100,
                            "errors": 0,
                            "invalidOutputs": 0,
                            "p99LatencyMs": 5.0,
                            **({"variant": dev.variant} if dev.variant else {}),
                            **dev.metrics.get(d.version, {}),
                            **({"rollback": True} if d.rollback_order else {}),
                        }
                dev.reported = {"models": models}

    def evaluate(self) -> None:
        """What IoT Hub does every five minutes: recompute each configuration's metrics."""
        with self.lock:
            modules = self.module_docs()
            devices = [self.device_doc(d) for d in sorted(self.devices)]
            for cfg in self.configs.values():
                cfg["systemMetrics"]["queries"] = system_queries(cfg["id"], cfg["targetCondition"])
                cfg["systemMetrics"]["results"] = {
                    name: len(run_query(q, devices, modules)) for name, q in cfg["systemMetrics"]["queries"].items()
                }
                cfg["metrics"]["results"] = {name: len(run_query(q, [], modules)) for name, q in cfg["metrics"]["queries"].items()}

    def tick(self) -> None:
        self.apply()
        self.evaluate()

    # HTTP -------------------------------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if data:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, text: str, headers: dict[str, str] | None = None):
                self._send(
                    status,
                    {"Message": f"ErrorCode:{code};{text}", "ExceptionMessage": "Tracking ID:local-G:0-TimeStamp:now"},
                    {"iothub-errorcode": code, **(headers or {})},
                )

            def _handle(self, method: str):
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with hub.lock:
                    hub.requests.append({"method": method, "path": url.path, "query": query, "headers": dict(self.headers), "body": body})
                    for i, (m, prefix, status, headers) in enumerate(hub.faults):
                        if m == method and url.path.startswith(prefix):
                            hub.faults.pop(i)
                            return self._error(status, "ThrottlingException" if status == 429 else "ServerError", "injected", headers)
                    problem = verify_sas(self.headers.get("Authorization", ""), hub.host, hub.keys)
                    if problem:
                        return self._error(401, "IotHubUnauthorizedAccess", problem)
                    if query.get("api-version") != "2021-04-12":
                        return self._error(400, "InvalidProtocolVersion", f"api-version {query.get('api-version')!r}")
                    parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
                    if parts[:1] == ["configurations"]:
                        return self._configurations(method, parts[1:], body)
                    if parts == ["devices", "query"] and method == "POST":
                        wait = hub._quota_wait()
                        if wait:
                            hub.throttled += 1
                            return self._error(429, "ThrottlingException", "query quota exceeded", {"Retry-After": f"{wait:.3f}"})
                        return self._query(body["query"])
                    return self._error(404, "NotFound", url.path)

            def _configurations(self, method: str, rest: list[str], body: Any):
                if not rest:
                    return self._send(200, [hub._public(c) for c in sorted(hub.configs.values(), key=lambda c: c["id"])])
                cid = rest[0]
                cfg = hub.configs.get(cid)
                if_match = self.headers.get("If-Match")
                if method == "GET":
                    return (
                        self._send(200, hub._public(cfg))
                        if cfg
                        else self._error(404, "ConfigurationNotFound", f"configuration {cid} not found")
                    )
                if method == "DELETE":
                    if cfg is None:
                        return self._error(404, "ConfigurationNotFound", f"configuration {cid} not found")
                    if if_match not in ("*", '"*"') and if_match.strip('"') != cfg["etag"]:
                        return self._error(412, "PreconditionFailed", "etag mismatch")
                    del hub.configs[cid]
                    hub.timeline.append(("delete", cid, sorted(hub.configs)))
                    return self._send(204)
                if method == "PUT":
                    if body.get("id") != cid:
                        return self._error(400, "ArgumentInvalid", "id in body and url differ")
                    if if_match is None:
                        if cfg is not None:
                            return self._error(409, "ConfigurationAlreadyExists", f"configuration {cid} already exists")
                        cfg = {
                            **copy.deepcopy(body),
                            "etag": hub._etag(),
                            "_created": next(hub._created),
                            "createdTimeUtc": f"2026-01-01T00:00:{next(hub._created):06d}Z",
                            "systemMetrics": {"queries": system_queries(cid, body.get("targetCondition", "")), "results": {}},
                            "metrics": {"queries": dict(body.get("metrics", {}).get("queries", {})), "results": {}},
                        }
                        hub.configs[cid] = cfg
                        hub.timeline.append(("create", cid, sorted(hub.configs)))
                        return self._send(201, hub._public(cfg))
                    if cfg is None:
                        return self._error(404, "ConfigurationNotFound", f"configuration {cid} not found")
                    if if_match not in ("*", '"*"') and if_match.strip('"') != cfg["etag"]:
                        return self._error(412, "PreconditionFailed", "The etag in the request does not match the configuration's etag")
                    if json.dumps(body.get("content"), sort_keys=True) != json.dumps(cfg["content"], sort_keys=True):
                        return self._error(400, "ArgumentInvalid", "Configuration content cannot be updated")
                    for k in ("targetCondition", "priority", "labels"):
                        cfg[k] = copy.deepcopy(body.get(k))
                    cfg["metrics"]["queries"] = dict(body.get("metrics", {}).get("queries", {}))
                    cfg["etag"] = hub._etag()
                    return self._send(200, hub._public(cfg))
                return self._error(405, "MethodNotAllowed", method)

            def _query(self, sql: str):
                if not self.headers.get("x-ms-continuation"):
                    hub.queries.append(sql)
                rows = run_query(sql, [hub.device_doc(d) for d in sorted(hub.devices)], hub.module_docs())
                start = int(self.headers.get("x-ms-continuation") or 0)
                size = min(int(self.headers.get("x-ms-max-item-count") or 100), hub.page_size_cap)
                page = rows[start : start + size]
                more = {"x-ms-continuation": str(start + size)} if start + size < len(rows) else {}
                return self._send(200, page, more)

            def do_GET(self):
                self._handle("GET")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

            def do_POST(self):
                self._handle("POST")

        return Handler

    def _quota_wait(self) -> float:
        """Seconds until the query quota has room (0: it has, and this query is counted)."""
        if self.query_quota is None:
            return 0.0
        now = time.monotonic()
        self.query_times = [t for t in self.query_times if t > now - self.quota_window]
        if len(self.query_times) >= self.query_quota:
            return max(0.001, self.query_times[0] + self.quota_window - now)
        self.query_times.append(now)
        return 0.0

    def _etag(self) -> str:
        return base64.b64encode(str(next(self._etags)).encode()).decode()

    @staticmethod
    def _public(cfg: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in cfg.items() if not k.startswith("_")}


class SimModuleClient:
    """azure.iot.device's IoTHubModuleClient (sync, v2) of the edgefleet agent module on a simulated device, as
    IoTEdgeTransport uses it: `get_twin()` reads the agent twin IoT Hub computed (`SimDevice.agent_desired`), and
    when IoT Hub applies a change, the desired-properties handler gets the whole new desired properties (with
    `$version`), which does not null the keys the change dropped. Reported patches are kept here, apart from the
    reports `FakeIotHub.apply` simulates."""

    def __init__(self, hub: "FakeIotHub", device_id: str) -> None:
        self.hub = hub
        self.device_id = device_id
        self.on_twin_desired_properties_patch_received: Any = None
        self.on_connection_state_change: Any = None
        self.reported: list[dict[str, Any]] = []
        self.notified: list[dict[str, Any]] = []
        with hub.lock:
            hub.devices[device_id].module_clients.append(self)

    def get_twin(self) -> dict[str, Any]:
        with self.hub.lock:
            return {"desired": copy.deepcopy(self.hub.devices[self.device_id].agent_desired), "reported": {}}

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any]) -> None:
        self.reported.append(copy.deepcopy(reported_properties_patch))

    def shutdown(self) -> None:
        with self.hub.lock:
            self.hub.devices[self.device_id].module_clients.remove(self)

    def notify(self, desired: dict[str, Any]) -> None:
        self.notified.append(desired)
        if self.on_twin_desired_properties_patch_received is not None:
            self.on_twin_desired_properties_patch_received(copy.deepcopy(desired))


# -- the fake Key Vault ---------------------------------------------------------------------------------------------
class FakeKeyVault:
    """GET /keys/<name>/<version> and POST .../sign for one EC P-256 key; answers sign with raw r||s like Key Vault."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None, token: str = "test-token") -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.token = token
        self.signed = 0
        self.forbidden = 0  # answer this many more requests with 403 ...
        self.forbidden_code = "ForbiddenByRbac"  # ... and this inner error code
        self.requests = 0
        vault = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _auth(self) -> bool:
                vault.requests += 1
                if self.headers.get("Authorization") != f"Bearer {vault.token}":
                    self._send(401, {"error": {"code": "Unauthorized", "message": "bad token"}})
                    return False
                if vault.forbidden > 0:
                    vault.forbidden -= 1
                    self._send(
                        403,
                        {
                            "error": {
                                "code": "Forbidden",
                                "innererror": {"code": vault.forbidden_code},
                                "message": (
                                    "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role "
                                    "definitions were changed recently, please observe propagation time.\r\nAssignment: (not found)"
                                ),
                            }
                        },
                    )
                    return False
                return True

            def do_GET(self):
                if self._auth():
                    n = vault.key.public_key().public_numbers()

                    def b(i):
                        return base64.urlsafe_b64encode(i.to_bytes(32, "big")).rstrip(b"=").decode()

                    self._send(
                        200,
                        {"key": {"kid": vault.kid, "kty": "EC", "crv": "P-256", "x": b(n.x), "y": b(n.y), "key_ops": ["sign", "verify"]}},
                    )

            def do_POST(self):
                if not self._auth():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("alg") != "ES256":
                    return self._send(400, {"error": {"code": "BadParameter", "message": f"alg {body.get('alg')}"}})
                digest = base64.urlsafe_b64decode(body["value"] + "=" * (-len(body["value"]) % 4))
                der = vault.key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
                vault.signed += 1
                self._send(200, {"kid": vault.kid, "value": base64.urlsafe_b64encode(der_to_raw(der)).rstrip(b"=").decode()})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.kid = f"http://127.0.0.1:{self.server.server_address[1]}/keys/edgefleet-signing/{'a' * 32}"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StaticToken:
    """A credential with azure-identity's get_token shape."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str):
        self.scopes += scopes

        @dataclass
        class AccessToken:
            token: str
            expires_on: int

        return AccessToken(self.token, int(time.time()) + 3600)
