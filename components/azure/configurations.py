"""IoT Edge deployments as Pulumi resources: a client for IoT Hub's configurations REST API and a dynamic provider.

ARM has no resource for IoT Hub configurations (automatic and layered IoT Edge deployments are data-plane
objects), so `Configuration` below declares one through
`PUT/GET/DELETE https://{hub}.azure-devices.net/configurations/{id}?api-version=2021-04-12`, authenticated with
a SAS token signed by a shared access policy's key. The key arrives as a secret input and is kept (encrypted)
in the state for delete; the pickled provider holds no credentials.

Replacement without a window. IoT Hub refuses to change a configuration's content after creation (only
targetCondition, priority, labels and metrics are mutable). A changed model, image or manifest therefore means
a new configuration, and the order of the two calls decides whether the ring's devices briefly have no
deployment:

1. The id is derived from the content (`<prefix>-<hint>-<sha256 of content>[:10]`), so the replacement gets a
   new id and can exist beside the old one. The provider asks Pulumi for create-before-delete
   (`delete_before_replace=False`).
2. `create` PUTs the new configuration. It has the same priority as the old one, and among equal priorities
   IoT Hub applies the most recently created, so devices move to the new content while the old still exists.
3. Only then are the ring's other configurations removed: `create` deletes siblings that carry the same
   `exclusive_label` value (e.g. a rollback layer the gate created), and Pulumi deletes the old resource at
   the end of the update. Every device is covered by one of them at every instant.

Deleting first (delete-before-replace) would leave the ring on the base deployment alone, i.e. without its
model, until the new configuration is created and evaluated (IoT Hub evaluates every five minutes).

Conditional writes. Updates send `If-Match` with the ETag recorded at the last write, so an out-of-band change
fails with 412 instead of being overwritten; deletes are unconditional (`If-Match: *`) so a stale ETag never
blocks tearing a stack down. 429 and 5xx are retried with backoff, honouring Retry-After (see rest.py); other
4xx raise an error naming the configuration, the hub and the hub's own message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import urllib.parse
from typing import Any, Callable, Mapping

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, Resource, ResourceProvider, UpdateResult

from components.azure import rest
from components.props import Props
from edgefleet_agent.contract.errors import EdgefleetError

API_VERSION = "2021-04-12"
PROVIDER_VERSION = "2"  # 2: a changed hub key refreshes the saved outputs
SCHEMA_VERSION = "1.0"  # the configuration object's own schema version
ID_MAX = 128
SECRET_RE = re.compile(r"\$\{secret:([A-Za-z0-9_]+)\}")
MUTABLE = ("target_condition", "priority", "labels", "metrics")
IMMUTABLE = ("content", "secrets", "id_prefix", "id_hint", "hub_host")
ACCESS = ("hub_key", "key_name", "endpoint")


class IotHubError(EdgefleetError):
    """IoT Hub refused a request. `status` is the HTTP status, `code` IoT Hub's error code when it sent one."""

    def __init__(self, where: str, problem: str, fix: str | None = None, status: int | None = None, code: str | None = None) -> None:
        super().__init__(where, problem, fix)
        self.status = status
        self.code = code


# -- authentication -------------------------------------------------------------------------------------------
def sas_token(host: str, key_name: str, key: str, ttl: int = 3600, now: float | None = None) -> str:
    """IoT Hub security token: HMAC-SHA256 with the base64-decoded policy key over `<url-encoded uri>\\n<expiry>`."""
    resource = urllib.parse.quote(host.lower(), safe="")
    expiry = int((time.time() if now is None else now) + ttl)
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256).digest()
    sig = urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={sig}&se={expiry}&skn={urllib.parse.quote(key_name, safe='')}"


def verify_sas(token: str, host: str, keys: dict[str, str], now: float | None = None) -> str | None:
    """What is wrong with `token` for `host`, or None. The local test hub uses it the way IoT Hub would."""
    if not token.startswith("SharedAccessSignature "):
        return "not a SharedAccessSignature"
    fields = dict(urllib.parse.parse_qsl(token.removeprefix("SharedAccessSignature "), keep_blank_values=True))
    if {"sr", "sig", "se", "skn"} - set(fields):
        return f"missing fields {sorted({'sr', 'sig', 'se', 'skn'} - set(fields))}"
    if fields["sr"] != host.lower():
        return f"token is for {fields['sr']!r}, not {host.lower()!r}"
    if int(fields["se"]) < (time.time() if now is None else now):
        return "token expired"
    key = keys.get(fields["skn"])
    if key is None:
        return f"no shared access policy {fields['skn']!r}"
    resource = urllib.parse.quote(fields["sr"], safe="")
    want = base64.b64encode(hmac.new(base64.b64decode(key), f"{resource}\n{fields['se']}".encode(), hashlib.sha256).digest()).decode()
    return None if hmac.compare_digest(want, fields["sig"]) else "signature does not match"


# -- identity ---------------------------------------------------------------------------------------------------
def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def slug(text: str) -> str:
    """Configuration ids: lower case letters, digits and a few symbols; we keep to [a-z0-9-]."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def configuration_id(prefix: str, hint: str, content: Any, secrets: dict[str, str] | None = None) -> str:
    """A new id whenever the (immutable) content changes: readable prefix and hint, then a content digest.

    Secrets are folded in as a digest of their values, so a rotated SAS also yields a new configuration.
    """
    h = hashlib.sha256(canonical(content).encode())
    if secrets:
        h.update(hashlib.sha256(canonical(secrets).encode()).digest())
    digest = h.hexdigest()[:10]
    head = "-".join(p for p in (slug(prefix), slug(hint)) if p)
    room = ID_MAX - len(digest) - 1
    if len(head) > room:
        head = head[: room - 9].rstrip("-") + "-" + hashlib.sha256(head.encode()).hexdigest()[:8]
    return f"{head}-{digest}" if head else digest


def fill_secrets(value: Any, secrets: dict[str, str]) -> Any:
    """Replaces `${secret:name}` placeholders, so previews and the graph show content without secret values."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            if m.group(1) not in secrets:
                raise KeyError(f"content refers to secret {m.group(1)!r}, which was not given")
            return secrets[m.group(1)]

        return SECRET_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: fill_secrets(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_secrets(v, secrets) for v in value]
    return value


# -- client -----------------------------------------------------------------------------------------------------
def _hub_message(resp: rest.Response) -> tuple[str | None, str]:
    """IoT Hub's error code and message. Bodies look like {"Message": "ErrorCode:X;text", "ExceptionMessage": "..."}."""
    code = resp.header("iothub-errorcode")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("Message") or body.get("message") or "")
        m = re.match(r"ErrorCode:([A-Za-z0-9]+);?(.*)", text, re.S)
        if m:
            code = code or m.group(1)
            text = m.group(2).strip()
        extra = body.get("ExceptionMessage")
        if extra and str(extra) not in text:
            text = f"{text} ({extra})" if text else str(extra)
        return code or body.get("errorCode") or body.get("code"), text or canonical(body)
    return code, resp.body.decode(errors="replace").strip()[:500] or "(no message)"


FIXES = {
    401: "check that the shared access policy exists on the hub and its key is current (the key is read at deploy time)",
    403: "the shared access policy needs RegistryRead and RegistryWrite rights",
    404: "it was deleted outside Pulumi (for example replaced by an edgefleet rollback); run `pulumi refresh`, then `pulumi up`",
    409: "a configuration with this id exists with other content; delete it (`az iot edge deployment delete`) or change the stack",
    412: "it was changed outside Pulumi since the last update; run `pulumi refresh` to pick up its ETag, then `pulumi up`",
    400: "the hub rejected the configuration; the message above names the field",
}


class HubClient:
    """The subset of IoT Hub's service REST API edgefleet uses: configurations and twin queries."""

    def __init__(
        self, host: str, key_name: str, key: str, endpoint: str | None = None, policy: rest.RetryPolicy | None = None, timeout: float = 30.0
    ) -> None:
        self.host = host
        self.key_name = key_name
        self._key = key
        self.endpoint = (endpoint or f"https://{host}").rstrip("/")
        self.policy = policy or rest.RetryPolicy(sleep=lambda s: _sleep(s))
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the key
        return f"HubClient({self.host!r}, key_name={self.key_name!r})"

    def _headers(self, extra: dict[str, str] | None = None) -> Callable[[], dict[str, str]]:
        return lambda: {"Authorization": sas_token(self.host, self.key_name, self._key), **(extra or {})}

    def _url(self, path: str, **query: str) -> str:
        return f"{self.endpoint}{path}?" + urllib.parse.urlencode({**query, "api-version": API_VERSION})

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        tolerate: tuple[int, ...] = (),
    ) -> rest.Response:
        try:
            resp = rest.send(method, self._url(path), self._headers(headers), body, policy=self.policy, timeout=self.timeout)
        except rest.TransportError as e:
            status = e.last.status if e.last else None
            code, msg = _hub_message(e.last) if e.last else (None, str(e))
            raise IotHubError(
                f"IoT Hub {self.host}, {what}",
                f"gave up after {self.policy.attempts} attempts: {msg}",
                "the hub is throttling or unavailable; wait and run `pulumi up` again",
                status,
                code,
            ) from None
        if resp.status in ok or resp.status in tolerate:
            return resp
        code, msg = _hub_message(resp)
        raise IotHubError(
            f"IoT Hub {self.host}, {what}",
            f"HTTP {resp.status}{' ' + code if code else ''}: {msg}",
            FIXES.get(resp.status),
            resp.status,
            code,
        )

    # configurations
    def get_configuration(self, config_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/configurations/{_q(config_id)}", f"configuration {config_id!r}", tolerate=(404,))
        return None if resp.status == 404 else resp.json()

    def list_configurations(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/configurations", "configurations").json() or [])

    def create_configuration(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create only: no If-Match, so an existing id answers 409 instead of being overwritten."""
        return self._call("PUT", f"/configurations/{_q(body['id'])}", f"configuration {body['id']!r}", body, ok=(200, 201)).json()

    def update_configuration(self, body: dict[str, Any], etag: str) -> dict[str, Any]:
        return self._call(
            "PUT",
            f"/configurations/{_q(body['id'])}",
            f"configuration {body['id']!r}",
            body,
            headers={"If-Match": quote_etag(etag)},
            ok=(200,),
        ).json()

    def delete_configuration(self, config_id: str, etag: str = "*") -> bool:
        """True if it was deleted now, False if it was already gone."""
        resp = self._call(
            "DELETE",
            f"/configurations/{_q(config_id)}",
            f"configuration {config_id!r}",
            headers={"If-Match": quote_etag(etag)},
            ok=(204, 200),
            tolerate=(404,),
        )
        return resp.status != 404

    # twin queries
    def query(self, sql: str, page_size: int = 1000, limit: int | None = None) -> list[dict[str, Any]]:
        """POST /devices/query, following x-ms-continuation until done or `limit` rows."""
        rows: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            headers = {"x-ms-max-item-count": str(page_size), **({"x-ms-continuation": token} if token else {})}
            resp = self._call("POST", "/devices/query", "twin query", {"query": sql}, headers=headers)
            rows += list(resp.json() or [])
            token = resp.header("x-ms-continuation")
            if not token or (limit is not None and len(rows) >= limit):
                return rows[:limit] if limit is not None else rows


def _q(config_id: str) -> str:
    return urllib.parse.quote(config_id, safe="")


def quote_etag(etag: str) -> str:
    """If-Match wants the quoted entity tag; IoT Hub hands ETags out bare in bodies and quoted in headers."""
    if etag == "*" or etag.startswith('"') or etag.startswith('W/"'):
        return etag
    return f'"{etag}"'


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


# -- the dynamic provider ---------------------------------------------------------------------------------------
class ConfigurationSpec(Props):
    """One IoT Hub configuration: its id's parts, content (secrets as `${secret:name}`), target, labels, metrics."""

    id_prefix: str
    id_hint: str = ""
    content: dict[str, Any]
    secrets: dict[str, str] = {}
    target_condition: str
    priority: int
    labels: dict[str, str] = {}
    metrics: dict[str, str] = {}
    exclusive_label: str | None = None
    check: str | None = None  # "edgefleet-agent": check the agent contract on the real values before sending


class ConfigurationProps(ConfigurationSpec):
    """The Configuration resource: the configuration and how to reach its hub."""

    hub_host: str
    key_name: str
    hub_key: str
    endpoint: str | None = None


def _client(p: ConfigurationProps) -> HubClient:
    return HubClient(p.hub_host, p.key_name, p.hub_key, p.endpoint)


def _body(config_id: str, p: ConfigurationSpec) -> dict[str, Any]:
    return {
        "id": config_id,
        "schemaVersion": SCHEMA_VERSION,
        "labels": dict(p.labels),
        "content": fill_secrets(p.content, dict(p.secrets)),
        "targetCondition": p.target_condition,
        "priority": p.priority,
        "metrics": {"queries": {name: q.replace("{config_id}", config_id) for name, q in p.metrics.items()}},
    }


def _outs(props: dict[str, Any], config_id: str, live: dict[str, Any]) -> dict[str, Any]:
    return {**props, "config_id": config_id, "etag": live.get("etag"), "created_time": live.get("createdTimeUtc")}


class ConfigurationProvider(ResourceProvider):
    """CRUD for one IoT Hub configuration. See the module docstring for why create-before-delete is safe."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        p = ConfigurationProps.of(props)
        config_id, live = apply_configuration(_client(p), p)
        return CreateResult(id_=config_id, outs=_outs(props, config_id, live))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """Hub access (policy key, key name, endpoint) is an in-place update: never a reason to replace the
        deployment, but the saved outputs must carry the current key, or a later delete signs with a dead one (401)."""
        keys = [k for k in (*IMMUTABLE, *MUTABLE, *ACCESS, "exclusive_label", "provider_version") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(keys), replaces=[k for k in keys if k in IMMUTABLE], delete_before_replace=False)

    def update(self, config_id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Writes the mutable fields if they changed, else only re-reads the configuration (with the new key, if
        that is what changed); either way the outputs become `news`."""
        p = ConfigurationProps.of(news)
        client = _client(p)
        if all(olds.get(k) == news.get(k) for k in MUTABLE):
            live = client.get_configuration(config_id) or {}
            return UpdateResult(outs=_outs(news, config_id, {**live, "etag": live.get("etag", olds.get("etag"))}))
        live = client.update_configuration(_body(config_id, p), olds.get("etag") or "*")
        return UpdateResult(outs=_outs(news, config_id, live))

    def delete(self, config_id: str, props: dict[str, Any]) -> None:
        try:
            _client(ConfigurationProps.of(props)).delete_configuration(config_id, "*")
        except IotHubError as e:
            if e.status != 401:
                raise
            raise IotHubError(
                e.where,
                e.problem,
                "the saved hub policy key is no longer valid: if the key was regenerated in the same "
                "`pulumi up` that replaced this deployment, its ring's new deployment has already removed it (check with "
                f"`az iot edge deployment show -d {config_id} -n <hub>`); then drop it from the state with `pulumi state delete <urn>`",
                e.status,
                e.code,
            ) from None

    def read(self, config_id: str, props: dict[str, Any]) -> ReadResult:
        live = _client(ConfigurationProps.of(props)).get_configuration(config_id)
        if live is None:
            return ReadResult(None, {})
        outs = {
            **props,
            "target_condition": live.get("targetCondition"),
            "priority": live.get("priority"),
            "labels": live.get("labels") or {},
            "etag": live.get("etag"),
            "created_time": live.get("createdTimeUtc"),
        }
        return ReadResult(config_id, outs)


def apply_configuration(client: HubClient, props: Mapping[str, Any] | ConfigurationSpec) -> tuple[str, dict[str, Any]]:
    """Creates the configuration `props` describe, then retires its siblings: the ordering that leaves no gap."""
    p = props if isinstance(props, ConfigurationSpec) else ConfigurationSpec.of(props)
    config_id = configuration_id(p.id_prefix, p.id_hint, p.content, dict(p.secrets))
    body = _body(config_id, p)
    if p.check == "edgefleet-agent":  # real values only exist now: check the agent contract before sending
        from components.azure.manifest import check_manifest

        problems = check_manifest(body["content"].get("modulesContent") or {})
        if problems:
            raise IotHubError(
                f"IoT Hub {client.host}, configuration {config_id!r}",
                "not sent, the content is invalid: " + "; ".join(problems),
                "this is an edgefleet bug or a tampered input; report it with the message above",
            )
    try:
        live = client.create_configuration(body)
    except IotHubError as e:
        if e.status != 409:
            raise
        live = adopt_existing(client, body)
    sweep_siblings(client, p, config_id)
    return config_id, live


def adopt_existing(client: HubClient, body: dict[str, Any]) -> dict[str, Any]:
    """409 on create: ours already (a retried create whose first answer was lost) is adopted; anything else is an error."""
    live = client.get_configuration(body["id"])
    if live is None:  # deleted between the two calls: create again
        return client.create_configuration(body)
    if canonical(live.get("content")) != canonical(body["content"]):
        raise IotHubError(
            f"IoT Hub {client.host}, configuration {body['id']!r}",
            "HTTP 409: a configuration with this id already exists with different content",
            FIXES[409],
            409,
        )
    if (
        any(live.get(k) != body[k] for k in ("targetCondition", "priority", "labels"))
        or (live.get("metrics") or {}).get("queries") != body["metrics"]["queries"]
    ):
        live = client.update_configuration(body, live.get("etag") or "*")
    return live


def sweep_siblings(client: HubClient, p: ConfigurationSpec, keep: str) -> list[str]:
    """After the new configuration exists, removes the others that claim the same slot (same exclusive label value)."""
    label = p.exclusive_label
    value = p.labels.get(label) if label else None
    if not value:
        return []
    removed = []
    for cfg in client.list_configurations():
        if cfg.get("id") != keep and (cfg.get("labels") or {}).get(label) == value:
            client.delete_configuration(cfg["id"], "*")
            removed.append(cfg["id"])
    return removed


class Configuration(Resource, module="edgefleet-azure", name="Configuration"):
    """An IoT Hub configuration (automatic or layered IoT Edge deployment) with content-derived id."""

    config_id: pulumi.Output[str]
    etag: pulumi.Output[str]
    created_time: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["hub_key", "secrets"]))
        super().__init__(
            ConfigurationProvider(),
            name,
            {"config_id": None, "etag": None, "created_time": None, **props, "provider_version": PROVIDER_VERSION},
            opts,
        )
