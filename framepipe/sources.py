"""Where a video comes from: a local path, an http(s) URL or ``s3://bucket/key``.

S3 objects are not downloaded: the decoder reads a presigned HTTPS URL with range requests, so memory does
not grow with the object's size and no temporary file is written (as the prototype did).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

import requests
from botocore.exceptions import BotoCoreError, ClientError

from framepipe import s3
from framepipe.errors import InputTooLarge, SourceNotFound, SourceUnreachable

log = logging.getLogger(__name__)

PRESIGN_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Source:
    source: str  # what the user gave
    uri: str  # what the decoder opens (a path or an http(s) URL)
    size_bytes: int | None
    identity: str  # changes when the content changes: etag, or size + mtime

    @property
    def name(self) -> str:
        path = urlparse(self.source).path if "://" in self.source else self.source
        base = os.path.basename(path.rstrip("/")) or "video"
        return os.path.splitext(base)[0]


def resolve(source: str, timeout_s: float = 30.0, max_bytes: int | None = None, follow_redirects: bool = True) -> Source:
    """Check that the source exists and is reachable, and say how the decoder should open it. With
    ``follow_redirects`` off (the HTTP service), an http(s) source that answers with a redirect is refused."""
    scheme = urlparse(source).scheme.lower() if "://" in source else ""
    if scheme == "s3":
        src = _resolve_s3(source, timeout_s)
    elif scheme in ("http", "https"):
        src = _resolve_http(source, timeout_s, follow_redirects)
    elif scheme in ("", "file"):
        path = urlparse(source).path if scheme == "file" else source
        path = os.path.abspath(os.path.expanduser(path))
        if not os.path.isfile(path):
            raise SourceNotFound(f"no such file: {source}")
        st = os.stat(path)
        src = Source(source, path, st.st_size, f"size={st.st_size};mtime={int(st.st_mtime)}")
    else:
        raise SourceNotFound(f"unsupported source scheme {scheme!r} (use a path, http(s):// or s3://)")
    if max_bytes and src.size_bytes and src.size_bytes > max_bytes:
        raise InputTooLarge(f"input is {src.size_bytes} bytes, over the cap of {max_bytes}")
    return src


def is_network(source: str) -> bool:
    return source.lower().startswith(("http://", "https://", "s3://"))


def serves_whole(source: str, timeout_s: float = 30.0, probe_bytes: int = 1 << 20) -> bool:
    """Whether a network source serves its bytes right now: resolved again, then its first ``probe_bytes`` (or all
    of a smaller object) read to the end in one range request. A decoder that met a reset connection, a server
    gone down or a stalled transfer sees damaged data; this tells those apart from a damaged file."""
    try:
        src = resolve(source, timeout_s=timeout_s)
        want = probe_bytes if not src.size_bytes else min(probe_bytes, src.size_bytes)
        with requests.get(src.uri, headers={"Range": f"bytes=0-{want - 1}"}, timeout=timeout_s, stream=True) as r:
            if r.status_code >= 400:
                return False
            got = sum(len(chunk) for chunk in r.iter_content(64 * 1024))
        return got >= want
    except (SourceNotFound, SourceUnreachable, requests.RequestException, OSError):
        return False


def read_object(source: str, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    """The bytes of a small S3 object (a query photo), refused over ``max_bytes`` before and while reading."""
    resolve(source, timeout_s=timeout_s, max_bytes=max_bytes)
    bucket, key = s3.split_s3_url(source)
    try:
        body = s3.client(timeout_s).get_object(Bucket=bucket, Key=key)["Body"]
        data = body.read(max_bytes + 1)
        body.close()
    except (ClientError, BotoCoreError) as e:
        raise SourceUnreachable(f"cannot read {source}: {e}") from None
    if len(data) > max_bytes:
        raise InputTooLarge(f"{source} is over the cap of {max_bytes} bytes")
    return data


def _resolve_s3(source: str, timeout_s: float) -> Source:
    try:
        bucket, key = s3.split_s3_url(source)
    except ValueError as e:
        raise SourceNotFound(str(e)) from None
    if not key:
        raise SourceNotFound(f"no object key in {source}")
    cli = s3.client(timeout_s)
    try:
        head = cli.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise SourceNotFound(f"no such S3 object: {source}") from None
        raise SourceUnreachable(f"S3 refused {source}: {code or e}") from None
    except BotoCoreError as e:
        raise SourceUnreachable(f"cannot reach S3 for {source}: {e}") from None
    url = cli.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGN_SECONDS)
    return Source(source, url, int(head["ContentLength"]), f"etag={head.get('ETag', '').strip(chr(34))}")


def _resolve_http(source: str, timeout_s: float, follow_redirects: bool = True) -> Source:
    try:
        # A one-byte range GET rather than HEAD: presigned URLs are often signed for GET only.
        with requests.get(source, headers={"Range": "bytes=0-0"}, timeout=timeout_s, stream=True,
                          allow_redirects=follow_redirects) as r:
            if r.is_redirect:
                raise SourceUnreachable(f"HTTP {r.status_code} for {source}: redirects are not followed")
            if r.status_code == 404:
                raise SourceNotFound(f"HTTP 404 for {source}")
            if r.status_code >= 400:
                raise SourceUnreachable(f"HTTP {r.status_code} for {source}")
            size = None
            if r.headers.get("Content-Range", "").rpartition("/")[2].isdigit():
                size = int(r.headers["Content-Range"].rpartition("/")[2])
            elif r.status_code == 200 and r.headers.get("Content-Length", "").isdigit():
                size = int(r.headers["Content-Length"])
            identity = r.headers.get("ETag") or r.headers.get("Last-Modified") or f"size={size}"
    except requests.RequestException as e:
        raise SourceUnreachable(f"cannot reach {source}: {type(e).__name__}") from None
    return Source(source, source, size, identity)


VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def is_single_input(root: str, images: bool = False) -> bool:
    """Does ``root`` name one input (a video or photo file or object) rather than a folder or prefix?"""
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    if root.startswith(("s3://", "http://", "https://")):
        return os.path.splitext(urlparse(root).path)[1].lower() in wanted
    return not os.path.isdir(os.path.expanduser(root))


def iter_videos(root: str, timeout_s: float = 30.0, images: bool = False) -> Iterator[Source]:
    """Every video file (by extension) under a local directory or ``s3://bucket/prefix``, listed lazily (S3 a page of
    1,000 keys at a time, folders one at a time, both in name order); a single file or object is a list of one.
    ``images``: photos too (each a one-frame input). Entries that cannot be read (a dangling symlink) are skipped
    with a warning rather than stopping the listing."""
    wanted = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS if images else VIDEO_EXTENSIONS
    if os.path.splitext(root)[1].lower() in wanted and (root.startswith("s3://") or os.path.isfile(root)):
        yield resolve(root, timeout_s=timeout_s)
        return
    if root.startswith("s3://"):
        bucket, prefix = s3.split_s3_url(root)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = s3.client(timeout_s).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    if os.path.splitext(obj["Key"])[1].lower() in wanted:
                        url = f"s3://{bucket}/{obj['Key']}"
                        yield Source(url, url, obj["Size"], f"etag={obj['ETag'].strip(chr(34))}")
        except ClientError as e:
            raise SourceNotFound(f"cannot list {root}: {e.response.get('Error', {}).get('Code', e)}") from None
        except BotoCoreError as e:  # no credentials, no endpoint: as for one object (_resolve_s3)
            raise SourceUnreachable(f"cannot reach S3 for {root}: {e}") from None
        return
    top = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(top):
        raise SourceNotFound(f"no such directory: {root}")
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() in wanted:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError as e:  # a dangling symlink, a file removed meanwhile
                    log.warning("skipping %s: %s", path, e.strerror or e)
                    continue
                yield Source(path, path, st.st_size, f"size={st.st_size};mtime={int(st.st_mtime)}")

