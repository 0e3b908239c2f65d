"""Small S3 helpers (boto3). Endpoint and credentials come from the usual AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, profiles...), so tests can point them at a
local S3 server."""

from __future__ import annotations

import functools
import os
from urllib.parse import urlparse

import boto3
from botocore.config import Config


def split_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/key/part' -> ('bucket', 'key/part')."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def aws_settings() -> dict:
    """The endpoint, region and current credentials boto3 resolves (environment, profiles, roles), for the clients
    that are not boto3 (delta-rs, pyarrow): ``region``, ``endpoint`` (or None) and, when there are credentials,
    ``access_key``, ``secret_key`` and ``token`` (or None). Read afresh at each call: temporary credentials
    expire."""
    session = boto3.session.Session()
    out = {"region": session.region_name or os.environ.get("AWS_REGION") or "us-east-1",
           "endpoint": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")}
    creds = session.get_credentials()
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        out.update(access_key=frozen.access_key, secret_key=frozen.secret_key, token=frozen.token)
    return out


def arrow_filesystem():
    """pyarrow's S3 filesystem with boto3's endpoint, region and credentials."""
    from pyarrow import fs

    aws = aws_settings()
    opts = {"region": aws["region"]}
    if "access_key" in aws:
        opts.update(access_key=aws["access_key"], secret_key=aws["secret_key"], session_token=aws["token"])
    if aws["endpoint"]:
        opts.update(endpoint_override=aws["endpoint"],
                    scheme="http" if aws["endpoint"].startswith("http://") else "https")
    return fs.S3FileSystem(**opts)


@functools.lru_cache(maxsize=8)
def client(timeout_s: float = 30.0):
    cfg = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client("s3", config=cfg)
