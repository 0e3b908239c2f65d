"""Signed webhook delivery.

Each delivery is a JSON POST with these headers:

* ``X-Framepipe-Timestamp``: Unix seconds when it was signed;
* ``X-Framepipe-Signature``: ``v1=<hex HMAC-SHA256 of "<timestamp>.<body>" with the shared secret>``;
* ``X-Framepipe-Idempotency-Key``: the job id, the same on every retry, so a receiver can drop duplicates.

Verifying, on the receiver's side (reject old timestamps to stop replays)::

    import hashlib, hmac, time
    def verify(secret: bytes, body: bytes, headers) -> bool:
        ts = headers["X-Framepipe-Timestamp"]
        good = "v1=" + hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(good, headers["X-Framepipe-Signature"]) and abs(time.time() - int(ts)) < 300

Timeouts, connection errors and 5xx answers are retried with exponential backoff, a bounded number of times; 4xx
answers are final. Every attempt is logged (never the secret).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests

log = logging.getLogger("framepipe.webhook")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, timestamp: str, signature: str, max_age_s: float = 300) -> bool:
    try:
        fresh = abs(time.time() - int(timestamp)) <= max_age_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, int(timestamp), body), signature)


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


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@dataclass
class Delivery:
    delivered: bool
    attempts: int
    status: int | None
    error: str | None = None


def deliver(
    url: str,
    payload: dict,
    secret: str,
    key: str,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
) -> Delivery:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    status, error = None, None
    for attempt in range(1, max_attempts + 1):
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "framepipe-webhook/1",
            "X-Framepipe-Timestamp": str(timestamp),
            "X-Framepipe-Signature": sign(secret, timestamp, body),
            "X-Framepipe-Idempotency-Key": key,
        }
        try:
            r = requests.post(url, data=body, headers=headers, timeout=timeout_s, allow_redirects=False)
            status, error = r.status_code, None
            log.info("webhook %s attempt %d/%d -> HTTP %d", key, attempt, max_attempts, r.status_code)
            if r.status_code < 300:
                return Delivery(True, attempt, status)
            if r.status_code < 500:
                return Delivery(False, attempt, status, f"HTTP {r.status_code}")  # the receiver refused: final
        except requests.RequestException as e:
            status, error = None, type(e).__name__
            log.info("webhook %s attempt %d/%d -> %s", key, attempt, max_attempts, error)
        if attempt < max_attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, max_attempts, status, error or f"HTTP {status}")
