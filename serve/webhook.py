"""Webhook delivery, signed as the Standard Webhooks specification says (https://www.standardwebhooks.com).

Each delivery is a JSON POST with the spec's three headers, signed with its reference library (``standardwebhooks``):

* ``webhook-id``: the job id, the same on every retry and on a redelivered job: receivers drop duplicates by it;
* ``webhook-timestamp``: Unix seconds when it was signed;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one per secret, space separated,
  so a secret can be rotated (sign with old and new, receivers move to the new one, drop the old).

Secrets are ``whsec_`` + base64, as the spec has them. A receiver verifies with any Standard Webhooks library::

    from standardwebhooks import Webhook
    Webhook("whsec_...").verify(body, headers)   # raises if the signature or the timestamp is wrong

Retries: timeouts, connection errors, 408, 5xx and 429 are retried with exponential backoff and full jitter, at most
``max_attempts`` times; a ``Retry-After`` on 429 or 503 is honoured (capped); 410 Gone stops at once (the receiver
asks for no more); redirects are never followed (a 3xx is a final failure); other 4xx are final. Every attempt is
recorded (``Delivery.attempts``) and logged, never the secret.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import requests
from standardwebhooks import Webhook

log = logging.getLogger("framepipe.webhook")

RETRY_AFTER_MAX_S = 300.0


def sign(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<sig>`` per secret."""
    when = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return " ".join(Webhook(s).sign(msg_id, when, body.decode()) for s in secrets)


def host_allowed(url: str, allowed_hosts: list[str]) -> bool:
    """http(s) URLs whose host is on the allow-list (exact names; ``*.example.com`` for subdomains)."""
    try:
        parsed = urlparse(url)
        host = (parsed.hostname or "").lower()
        if parsed.scheme not in ("http", "https") or not host or parsed.username or parsed.password:
            return False
    except ValueError:  # unparseable, e.g. an unbalanced "[" read as an IPv6 literal
        return False
    for allowed in (h.lower() for h in allowed_hosts):
        if host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])):
            return True
    return False


def port_allowed(url: str, ports: str) -> bool:
    """Is the URL's port (or its scheme's default) one of ``ports`` (comma-separated; ``*`` for any)?"""
    if ports.strip() == "*":
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return str(port) in {p.strip() for p in ports.split(",")}


def public_only(url: str) -> bool:
    """Does every address the URL's host resolves to lie on the public internet (no loopback, link-local, private
    or reserved range)?"""
    parsed = urlparse(url)
    try:
        infos = socket.getaddrinfo(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError, ValueError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_global for info in infos)


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    status: int | None
    error: str | None = None
    log: list[dict] = field(default_factory=list)  # one entry per attempt: at, status, error, next wait


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        return min(RETRY_AFTER_MAX_S, max(0.0, float(value)))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return min(RETRY_AFTER_MAX_S, max(0.0, when.timestamp() - time.time()))
        except (TypeError, ValueError):
            return None


def deliver(
    url: str,
    payload: dict,
    secrets: list[str],
    msg_id: str,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
    session: requests.Session | None = None,
) -> Delivery:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    http = session or requests
    attempts: list[dict] = []
    status, error = None, None
    for attempt in range(1, max_attempts + 1):
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "framepipe-webhook/2",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secrets, msg_id, timestamp, body),
        }
        wait = backoff_s * 2 ** (attempt - 1) * random.random()  # full jitter
        final = False
        try:
            r = http.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
            status, error = r.status_code, None
            if 200 <= r.status_code < 300:
                attempts.append({"at": timestamp, "status": status, "error": None})
                log.info("webhook %s attempt %d -> HTTP %d", msg_id, attempt, status)
                return Delivery(True, attempt, status, None, attempts)
            error = f"HTTP {r.status_code}"
            if r.status_code in (429, 503):
                wait = retry_after(r.headers.get("Retry-After")) or wait
            elif r.status_code == 410 or 300 <= r.status_code < 400:
                final = True  # gone: stop; a redirect is never followed
                error += " (gone: no more attempts)" if r.status_code == 410 else " (redirects are not followed)"
            elif r.status_code < 500 and r.status_code != 408:
                final = True  # the receiver refused the delivery
        except requests.RequestException as e:
            status, error = None, type(e).__name__
        last = final or attempt == max_attempts
        attempts.append({"at": timestamp, "status": status, "error": error, "retry_in_s": None if last else round(wait, 2)})
        log.info("webhook %s attempt %d -> %s", msg_id, attempt, error)
        if last:
            break
        time.sleep(wait)
    return Delivery(False, len(attempts), status, error, attempts)
