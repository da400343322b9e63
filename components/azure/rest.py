"""One JSON-over-HTTPS call with Azure's retry contract, shared by the IoT Hub and Key Vault clients.

Retries 429 and every 5xx (and dropped connections) with exponential backoff and full jitter, waiting at least
as long as the service's Retry-After says (seconds or an HTTP date): a 5xx says the service failed, not the
request, so the same request may succeed later. Any other answer that is not a success is returned to the
caller, which knows what the request was for and names it in the error. Standard library only, so the dynamic
providers pickle small and need nothing installed beyond the project.
"""

from __future__ import annotations

import email.utils
import json
import random
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_RETRY_AFTER = 300.0


def retryable(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_delay: float = 1.0
    max_delay: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after) if retry_after is not None else backoff


class TransportError(Exception):
    """The service could not be reached, or kept answering 429/5xx until the retries ran out."""

    def __init__(self, message: str, last: Response | None = None) -> None:
        super().__init__(message)
        self.last = last


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110 section 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER)


def send(
    method: str,
    url: str,
    headers: Callable[[], dict[str, str]],
    body: Any = None,
    *,
    policy: RetryPolicy | None = None,
    timeout: float = 30.0,
) -> Response:
    """Sends until a non-retryable answer. `headers` is called per attempt so tokens are fresh on each try."""
    policy = policy or RetryPolicy()
    data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    last: Response | None = None
    problem = ""
    for attempt in range(policy.attempts):
        hdrs = {"Accept": "application/json", **headers()}
        if data is not None:
            hdrs["Content-Type"] = "application/json; charset=utf-8"
        request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as e:
            last = Response(e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, e.read() or b"")
            if not retryable(e.code):
                return last
            problem = f"HTTP {e.code}"
            wait = policy.delay(attempt, retry_after_seconds(last.header("retry-after")))
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            problem = f"connection failed ({getattr(e, 'reason', e)})"
            wait = policy.delay(attempt, None)
        if attempt + 1 < policy.attempts:
            policy.sleep(wait)
    raise TransportError(f"{method} {url.split('?')[0]}: {problem} after {policy.attempts} attempts", last)
