"""Where outputs go: a local directory or ``s3://bucket/prefix``, behind one small interface."""

from __future__ import annotations

import contextlib
import os
import posixpath
import socket
import time
import uuid

from botocore.exceptions import BotoCoreError, ClientError

from framepipe import s3
from framepipe.errors import DestinationError

CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".json": "application/json",
    ".parquet": "application/vnd.apache.parquet",
    ".html": "text/html; charset=utf-8",
}


HOST = socket.gethostname().replace(".", "-").replace("~", "-")
STALE_AFTER_S = 3600.0  # another machine's temporary file this old is a dead run's


def partial_name(url: str) -> str:
    """A temporary name beside ``url`` for this writer alone (two processes or threads writing the same file never
    share one): ``<url>.<host>~<pid>~<random>.part``."""
    return f"{url}.{HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}.part"


def _dead_writers(path: str, name: str) -> bool:
    """Is this ``*.part`` file a dead run's? Ours (this host) when its process is gone; another host's when old;
    one with no writer in its name (older framepipe) always."""
    parts = name[: -len(".part")].rsplit(".", 1)[-1].split("~")
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    if host == HOST:
        try:
            os.kill(pid, 0)
            return False  # alive: a writer in flight
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    try:
        return time.time() - os.stat(path).st_mtime > STALE_AFTER_S
    except OSError:
        return False


class AlreadyExists(Exception):
    """:meth:`Destination.create` found the name taken."""


class Destination:
    """Writes files under a root and returns the URL (S3) or absolute path (local) of each."""

    def __init__(self, root: str, timeout_s: float = 30.0):
        self.root = root.rstrip("/")
        self.timeout_s = timeout_s
        self.is_s3 = root.startswith("s3://")
        if self.is_s3:
            self.bucket, self.prefix = s3.split_s3_url(self.root)
            self._s3 = s3.client(timeout_s)
        else:
            self.root = os.path.abspath(os.path.expanduser(self.root))

    def url(self, relpath: str) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{posixpath.join(self.prefix, relpath) if self.prefix else relpath}"
        return os.path.join(self.root, relpath)

    def child(self, relpath: str) -> "Destination":
        return Destination(self.url(relpath), timeout_s=self.timeout_s)

    def write(self, relpath: str, data: bytes) -> str:
        """Write ``relpath`` whole (locally: a temporary file renamed over it, so readers never see half a file)."""
        return self._put(relpath, data, exclusive=False)

    def remove_partials(self, relpath: str = "", prefix: str = "") -> int:
        """Delete the ``*.part`` files a killed writer left under ``relpath`` (local only: S3 writes are whole),
        those whose name starts with ``prefix``; never a live writer's (:func:`partial_name`). Returns how many."""
        if self.is_s3:
            return 0
        removed = 0
        for folder, _, names in os.walk(self.url(relpath)):
            for name in names:
                if not name.endswith(".part") or not name.startswith(prefix):
                    continue  # (a report's folder holds a page per video: no path made for each)
                path = os.path.join(folder, name)
                if _dead_writers(path, name):
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                        removed += 1
        return removed

    def create(self, relpath: str, data: bytes) -> str:
        """Write ``relpath`` whole, only if nothing is there yet (else :class:`AlreadyExists`), atomically: S3's
        conditional write (``If-None-Match: *``); locally a complete temporary file hard-linked to the name (a link
        fails when the name exists)."""
        return self._put(relpath, data, exclusive=True)

    def _put(self, relpath: str, data: bytes, exclusive: bool) -> str:
        url = self.url(relpath)
        try:
            if self.is_s3:
                _, key = s3.split_s3_url(url)
                ctype = CONTENT_TYPES.get(os.path.splitext(relpath)[1], "application/octet-stream")
                condition = {"IfNoneMatch": "*"} if exclusive else {}
                try:
                    self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=ctype, **condition)
                except ClientError as e:
                    if exclusive and e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                        raise AlreadyExists(url) from None
                    raise
                return url
            os.makedirs(os.path.dirname(url), exist_ok=True)
            tmp = partial_name(url)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    if exclusive:  # a commit: on disk before it has its name
                        f.flush()
                        os.fsync(f.fileno())
                if not exclusive:
                    os.replace(tmp, url)
                    return url
                try:
                    os.link(tmp, url)
                except FileExistsError:
                    os.unlink(tmp)
                    raise AlreadyExists(url) from None
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a full disk: give back what the half-written file took
                raise
            os.unlink(tmp)  # linked: the name holds the data now
        except (OSError, ClientError, BotoCoreError) as e:
            raise DestinationError(f"cannot write {url}: {e}") from None
        return url

    def delete(self, relpath: str) -> None:
        """Remove a file (nothing if it is not there)."""
        url = self.url(relpath)
        if self.is_s3:
            _, key = s3.split_s3_url(url)
            self._s3.delete_object(Bucket=self.bucket, Key=key)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(url)

    def delete_many(self, relpaths: list[str]) -> None:
        """Remove files (those not there are skipped): on S3 a request per 1,000 keys (DeleteObjects)."""
        if not self.is_s3:
            for rel in relpaths:
                self.delete(rel)
            return
        keys = [s3.split_s3_url(self.url(rel))[1] for rel in relpaths]
        for start in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            done = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            if done.get("Errors"):
                first = done["Errors"][0]
                raise OSError(f"cannot delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def mtime(self, relpath: str) -> float:
        """When a file was last written (seconds since the epoch)."""
        url = self.url(relpath)
        if self.is_s3:
            _, key = s3.split_s3_url(url)
            return self._s3.head_object(Bucket=self.bucket, Key=key)["LastModified"].timestamp()
        return os.stat(url).st_mtime

    def read(self, relpath: str) -> bytes:
        url = self.url(relpath)
        if self.is_s3:
            _, key = s3.split_s3_url(url)
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        with open(url, "rb") as f:
            return f.read()

    def arrow_source(self, relpath: str):
        """(path, pyarrow filesystem) to read a file in part (a Parquet file's footer and the column chunks a
        reader asks for: ranged GETs on S3, from the same AWS settings as boto3), for ``pq.read_table``."""
        if not self.is_s3:
            return self.url(relpath), None
        bucket, key = s3.split_s3_url(self.url(relpath))
        return f"{bucket}/{key}", s3.arrow_filesystem()

    def presign(self, url: str, seconds: int) -> str:
        """A presigned HTTPS GET URL for an s3:// URL written here."""
        bucket, key = s3.split_s3_url(url)
        return self._s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds)

    def _children(self, relpath: str) -> tuple[list[str], list[str]]:
        """(files, folders) directly under ``relpath``; S3 folders are the common prefixes of one delimited listing."""
        url = self.url(relpath).rstrip("/") + "/"
        if self.is_s3:
            _, key = s3.split_s3_url(url)
            files, dirs = [], []
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key, Delimiter="/"):
                files += [o["Key"][len(key) :] for o in page.get("Contents", [])]
                dirs += [p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
            return files, dirs
        try:
            with os.scandir(url) as it:
                entries = [*it]
        except FileNotFoundError:
            return [], []
        files = [e.name for e in entries if e.is_file() and not e.name.endswith(".part")]
        return files, [e.name for e in entries if e.is_dir()]

    def list(self, relpath: str) -> list[str]:
        """Names of the files directly under ``relpath`` (empty if it does not exist)."""
        return self._children(relpath)[0]

    def dirs(self, relpath: str) -> list[str]:
        """Names of the folders (S3: common prefixes) directly under ``relpath``."""
        return self._children(relpath)[1]

    def exists(self, relpath: str) -> bool:
        url = self.url(relpath)
        if self.is_s3:
            _, key = s3.split_s3_url(url)
            try:
                self._s3.head_object(Bucket=self.bucket, Key=key)
                return True
            except ClientError:
                return False
        return os.path.exists(url)


def destination(dest: str | os.PathLike | Destination) -> Destination:
    """A destination from its URL or path (or itself)."""
    return dest if isinstance(dest, Destination) else Destination(os.fspath(dest))
