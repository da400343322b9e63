"""A stand-in for AWS IoT fleet indexing (moto has no search aggregations) and for the Greengrass v2 deployment reads,
answered through `aws_testkit.emulate`, so botocore validates every request and response against the service model.

Fleet indexing: things with a type, attributes, thing groups, connectivity and named shadows; the query subset the
rings use (`field:value`, `field:"phrase"` without spaces, `field:*`, AND, OR, NOT, parentheses; NOT is the complement, so it matches things without
the field), at most 12 field terms a query as AWS allows; GetStatistics (count) and GetBucketsAggregation (terms
aggregation: the values of one field among matching things that have it, most common first, at most maxBuckets).
Faults: `fail(operation, code, times)` answers the next calls with that error code (ThrottlingException,
InternalFailureException with HTTP 500, …). Every answered call is counted in `calls`.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from aws_testkit import emulate

from components.aws.plan import MAX_QUERY_TERMS, query_terms

TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
STATUS = {"ThrottlingException": 429, "InternalFailureException": 500, "ServiceUnavailableException": 503, "AccessDeniedException": 403}


def _tokens(text: str) -> list[str]:
    return [m.group(1) for m in TOKEN.finditer(text) if m.group(1).strip()]


def _value(thing: dict[str, Any], path: str) -> Any:
    node: Any = thing
    parts = path.split(".")
    if parts[0] == "shadow" and len(parts) > 2 and parts[1] == "name":  # shadow.name.<name>.reported.<field>: names may hold dots? no
        node = thing.get("shadows", {}).get(parts[2])
        parts = parts[3:]
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


class Query:
    def __init__(self, text: str) -> None:
        if query_terms(text) > MAX_QUERY_TERMS:
            raise ValueError(f"more than {MAX_QUERY_TERMS} terms: {text}")
        self.toks, self.i = _tokens(text), 0
        self.tree = self._expr()
        if self.i != len(self.toks):
            raise ValueError(f"cannot parse {text!r} at {self.toks[self.i :]}")

    def _peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _expr(self) -> Any:
        node = self._term()
        while self._peek() == "OR":
            self.i += 1
            node = ("or", node, self._term())
        return node

    def _term(self) -> Any:
        node = self._factor()
        while self._peek() == "AND":
            self.i += 1
            node = ("and", node, self._factor())
        return node

    def _factor(self) -> Any:
        tok = self.toks[self.i]
        self.i += 1
        if tok == "NOT":
            return ("not", self._factor())
        if tok == "(":
            node = self._expr()
            assert self.toks[self.i] == ")", self.toks[self.i :]
            self.i += 1
            return node
        field, _, value = tok.partition(":")
        if not value:
            raise ValueError(f"not a field term: {tok!r}")
        if value.startswith('"'):  # a phrase; values here hold no white space, so it is one token
            if len(value) < 3 or not value.endswith('"') or '"' in value[1:-1]:
                raise ValueError(f"unterminated phrase: {tok!r}")
            value = value[1:-1]
        return ("term", field, value)

    def match(self, thing: dict[str, Any], node: Any = None) -> bool:
        node = self.tree if node is None else node
        kind = node[0]
        if kind == "and":
            return self.match(thing, node[1]) and self.match(thing, node[2])
        if kind == "or":
            return self.match(thing, node[1]) or self.match(thing, node[2])
        if kind == "not":
            return not self.match(thing, node[1])
        _, field, value = node
        if field == "thingGroupNames":
            return value in thing.get("thingGroupNames", [])
        got = _value(thing, field)
        if value == "*":
            return got is not None
        return got is not None and str(got).lower() == value.lower()


class FleetIndex:
    def __init__(self) -> None:
        self.things: dict[str, dict[str, Any]] = {}
        self.calls: Counter = Counter()
        self.faults: dict[str, list[str]] = {}

    def add(
        self,
        name: str,
        thing_type: str,
        attributes: dict[str, str],
        *,
        connected: bool = True,
        shadows: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.things[name] = {
            "thingName": name,
            "thingTypeName": thing_type,
            "attributes": attributes,
            "connectivity": {"connected": connected},
            "shadows": {k: {"reported": v} for k, v in (shadows or {}).items()},
        }

    def fail(self, operation: str, code: str, times: int = 1) -> None:
        self.faults.setdefault(operation, []).extend([code] * times)

    def _fault(self, operation: str) -> None:
        if self.faults.get(operation):
            from botocore.exceptions import ClientError

            code = self.faults[operation].pop(0)
            raise ClientError(
                {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": STATUS.get(code, 400)}}, operation
            )

    def _matching(self, query: str) -> list[dict[str, Any]]:
        q = Query(query)
        return [t for t in self.things.values() if q.match(t)]

    def get_statistics(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls["GetStatistics"] += 1
        self._fault("GetStatistics")
        return {"statistics": {"count": len(self._matching(params["queryString"]))}}

    def get_buckets_aggregation(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls["GetBucketsAggregation"] += 1
        self._fault("GetBucketsAggregation")
        values = [v for v in (_value(t, params["aggregationField"]) for t in self._matching(params["queryString"])) if v is not None]
        counts = Counter(str(v) for v in values)
        top = counts.most_common(params["bucketsAggregationType"]["termsAggregation"].get("maxBuckets", 10))
        return {"totalCount": len(values), "buckets": [{"keyValue": k, "count": n} for k, n in top]}

    def attach(self, iot: Any) -> list[tuple[str, dict[str, Any]]]:
        return emulate(iot, {"GetStatistics": self.get_statistics, "GetBucketsAggregation": self.get_buckets_aggregation})


class Deployments:
    """Greengrass v2's ListDeployments (LATEST_ONLY) and GetDeployment over a dict: target ARN -> components."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.calls: Counter = Counter()
        self.faults: dict[str, list[str]] = {}

    def set(self, target_arn: str, components: dict[str, Any]) -> None:
        n = len(self.latest) + 1
        self.latest[target_arn] = {"deploymentId": f"00000000-0000-0000-0000-{n:012d}", "targetArn": target_arn, "components": components}

    def list(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls["ListDeployments"] += 1
        FleetIndex._fault(self, "ListDeployments")  # type: ignore[arg-type]
        d = self.latest.get(params.get("targetArn", ""))
        return {"deployments": [{"deploymentId": d["deploymentId"], "targetArn": d["targetArn"], "isLatestForTarget": True}] if d else []}

    def get(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls["GetDeployment"] += 1
        d = next(d for d in self.latest.values() if d["deploymentId"] == params["deploymentId"])
        return {"deploymentId": d["deploymentId"], "targetArn": d["targetArn"], "components": d["components"], "iotJobId": "job-1"}

    def attach(self, greengrass: Any) -> list[tuple[str, dict[str, Any]]]:
        return emulate(greengrass, {"ListDeployments": self.list, "GetDeployment": self.get})
