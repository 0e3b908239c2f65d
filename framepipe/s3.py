"""Small S3 helpers (boto3). Endpoint and credentials come from the usual AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, profiles...), so tests can point them at a
local S3 server."""

from __future__ import annotations

import functools
from urllib.parse import urlparse

import boto3
from botocore.config import Config


def split_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/key/part' -> ('bucket', 'key/part')."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@functools.lru_cache(maxsize=1)
def arrow_filesystem():
    """pyarrow's S3 filesystem with boto3's endpoint, region and credentials."""
    import os

    from pyarrow import fs

    session = boto3.session.Session()
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials() if creds is not None else None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    opts = {"region": session.region_name or "us-east-1"}
    if frozen is not None:
        opts.update(access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token)
    if endpoint:
        opts.update(endpoint_override=endpoint, scheme="http" if endpoint.startswith("http://") else "https")
    return fs.S3FileSystem(**opts)


@functools.lru_cache(maxsize=8)
def client(timeout_s: float = 30.0):
    cfg = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client("s3", config=cfg)
