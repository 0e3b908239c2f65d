"""Where outputs go: a local directory or ``s3://bucket/prefix``, behind one small interface."""

from __future__ import annotations

import abc
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


class Destination(abc.ABC):
    """Where a run's outputs go: files under a root, named by their path relative to it. ``Destination(root)``
    gives the implementation the root names (:class:`S3Destination` for ``s3://bucket/prefix``, else
    :class:`LocalDestination`). Both raise the same errors: ``FileNotFoundError`` for a file that is not there,
    :class:`AlreadyExists` when :meth:`create` finds the name taken, :class:`~framepipe.errors.DestinationError`
    for anything else (permissions, a full disk, the network, credentials)."""

    is_s3 = False

    def __new__(cls, root: str, timeout_s: float = 30.0):
        if cls is Destination:
            cls = S3Destination if str(root).startswith("s3://") else LocalDestination
        return super().__new__(cls)

    def __init__(self, root: str, timeout_s: float = 30.0):
        self.root = root.rstrip("/")
        self.timeout_s = timeout_s

    @abc.abstractmethod
    def url(self, relpath: str) -> str:
        """The file's URL (S3) or absolute path (local)."""

    def child(self, relpath: str) -> "Destination":
        return Destination(self.url(relpath), timeout_s=self.timeout_s)

    def write(self, relpath: str, data: bytes) -> str:
        """Write ``relpath`` whole (readers never see half a file); returns its URL."""
        return self._put(relpath, data, exclusive=False)

    def create(self, relpath: str, data: bytes) -> str:
        """Write ``relpath`` whole, only if nothing is there yet (else :class:`AlreadyExists`), atomically."""
        return self._put(relpath, data, exclusive=True)

    @abc.abstractmethod
    def _put(self, relpath: str, data: bytes, exclusive: bool) -> str: ...

    def remove_partials(self, relpath: str = "", prefix: str = "") -> int:
        """Delete the temporary files a killed writer left under ``relpath``, those whose name starts with
        ``prefix``; returns how many (none where writes are whole: S3)."""
        return 0

    @abc.abstractmethod
    def delete(self, relpath: str) -> None:
        """Remove a file (nothing if it is not there)."""

    def delete_many(self, relpaths: list[str]) -> None:
        """Remove files (those not there are skipped)."""
        for rel in relpaths:
            self.delete(rel)

    @abc.abstractmethod
    def mtime(self, relpath: str) -> float:
        """When a file was last written (seconds since the epoch)."""

    @abc.abstractmethod
    def read(self, relpath: str) -> bytes: ...

    @abc.abstractmethod
    def arrow_source(self, relpath: str):
        """(path, pyarrow filesystem or None) to read a file in part (a Parquet file's footer and the column chunks a
        reader asks for), for ``pq.read_table``."""

    def presign(self, url: str, seconds: int) -> str:
        """A presigned HTTPS GET URL for a URL written here (S3 only)."""
        raise DestinationError(f"{self.root} is not on S3: no presigned URL for {url}")

    @abc.abstractmethod
    def _children(self, relpath: str) -> tuple[list[str], list[str]]:
        """(files, folders) directly under ``relpath``."""

    def list(self, relpath: str) -> list[str]:
        """Names of the files directly under ``relpath`` (empty if it does not exist)."""
        return self._children(relpath)[0]

    def dirs(self, relpath: str) -> list[str]:
        """Names of the folders (S3: common prefixes) directly under ``relpath``."""
        return self._children(relpath)[1]

    @abc.abstractmethod
    def exists(self, relpath: str) -> bool: ...


@contextlib.contextmanager
def _local_errors(url: str, doing: str):
    """Local failures as the interface's: a missing file stays ``FileNotFoundError``, any other a DestinationError."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DestinationError(f"cannot {doing} {url}: {e}") from None


class LocalDestination(Destination):
    """A directory: files written to a temporary name beside theirs, then renamed (or hard-linked: :meth:`create`)."""

    def __init__(self, root: str, timeout_s: float = 30.0):
        super().__init__(root, timeout_s)
        self.root = os.path.abspath(os.path.expanduser(self.root))

    def url(self, relpath: str) -> str:
        return os.path.join(self.root, relpath)

    def remove_partials(self, relpath: str = "", prefix: str = "") -> int:
        """Never a live writer's (:func:`partial_name`)."""
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

    def _put(self, relpath: str, data: bytes, exclusive: bool) -> str:
        """A complete temporary file renamed over the name, or (``exclusive``: a commit) synced and hard-linked to
        it (a link fails when the name exists)."""
        url = self.url(relpath)
        try:
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
        except OSError as e:  # a missing file too: a write has no file to miss
            raise DestinationError(f"cannot write {url}: {e}") from None
        return url

    def delete(self, relpath: str) -> None:
        url = self.url(relpath)
        with _local_errors(url, "delete"), contextlib.suppress(FileNotFoundError):
            os.unlink(url)

    def mtime(self, relpath: str) -> float:
        url = self.url(relpath)
        with _local_errors(url, "stat"):
            return os.stat(url).st_mtime

    def read(self, relpath: str) -> bytes:
        url = self.url(relpath)
        with _local_errors(url, "read"), open(url, "rb") as f:
            return f.read()

    def arrow_source(self, relpath: str):
        return self.url(relpath), None

    def _children(self, relpath: str) -> tuple[list[str], list[str]]:
        url = self.url(relpath).rstrip("/") + "/"
        try:
            with os.scandir(url) as it:
                entries = [*it]
        except FileNotFoundError:
            return [], []
        except OSError as e:
            raise DestinationError(f"cannot list {url}: {e}") from None
        files = [e.name for e in entries if e.is_file() and not e.name.endswith(".part")]
        return files, [e.name for e in entries if e.is_dir()]

    def exists(self, relpath: str) -> bool:
        return os.path.exists(self.url(relpath))


@contextlib.contextmanager
def _s3_errors(url: str, doing: str):
    """S3 failures as the interface's: a missing object ``FileNotFoundError``, any other a DestinationError."""
    try:
        yield
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):  # not NoSuchBucket
            raise FileNotFoundError(url) from None
        raise DestinationError(f"cannot {doing} {url}: {e}") from None
    except BotoCoreError as e:  # no credentials, no endpoint, a timeout
        raise DestinationError(f"cannot {doing} {url}: {e}") from None


class S3Destination(Destination):
    """``s3://bucket/prefix`` through boto3: whole-object PUTs (conditional for :meth:`create`)."""

    is_s3 = True

    def __init__(self, root: str, timeout_s: float = 30.0):
        super().__init__(root, timeout_s)
        self.bucket, self.prefix = s3.split_s3_url(self.root)
        self._s3 = s3.client(timeout_s)

    def url(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{posixpath.join(self.prefix, relpath) if self.prefix else relpath}"

    def _key(self, relpath: str) -> tuple[str, str]:
        url = self.url(relpath)
        return url, s3.split_s3_url(url)[1]

    def _put(self, relpath: str, data: bytes, exclusive: bool) -> str:
        """``If-None-Match: *`` makes :meth:`create` a conditional write."""
        url, key = self._key(relpath)
        ctype = CONTENT_TYPES.get(os.path.splitext(relpath)[1], "application/octet-stream")
        condition = {"IfNoneMatch": "*"} if exclusive else {}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=ctype, **condition)
        except ClientError as e:
            if exclusive and e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                raise AlreadyExists(url) from None
            raise DestinationError(f"cannot write {url}: {e}") from None
        except BotoCoreError as e:
            raise DestinationError(f"cannot write {url}: {e}") from None
        return url

    def delete(self, relpath: str) -> None:
        url, key = self._key(relpath)
        with _s3_errors(url, "delete"):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, relpaths: list[str]) -> None:
        """A request per 1,000 keys (DeleteObjects)."""
        keys = [self._key(rel)[1] for rel in relpaths]
        for start in range(0, len(keys), 1000):
            objects = [{"Key": k} for k in keys[start : start + 1000]]
            with _s3_errors(self.root, "delete objects under"):
                done = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
            if done.get("Errors"):
                first = done["Errors"][0]
                raise DestinationError(f"cannot delete {first.get('Key')}: {first.get('Code')} {first.get('Message')}")

    def mtime(self, relpath: str) -> float:
        url, key = self._key(relpath)
        with _s3_errors(url, "stat"):
            return self._s3.head_object(Bucket=self.bucket, Key=key)["LastModified"].timestamp()

    def read(self, relpath: str) -> bytes:
        url, key = self._key(relpath)
        with _s3_errors(url, "read"):
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def arrow_source(self, relpath: str):
        """Ranged GETs, from the same AWS settings as boto3."""
        bucket, key = s3.split_s3_url(self.url(relpath))
        return f"{bucket}/{key}", s3.arrow_filesystem()

    def presign(self, url: str, seconds: int) -> str:
        bucket, key = s3.split_s3_url(url)
        with _s3_errors(url, "presign"):
            return self._s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                   ExpiresIn=seconds)

    def _children(self, relpath: str) -> tuple[list[str], list[str]]:
        """Folders are the common prefixes of one delimited listing."""
        url = self.url(relpath).rstrip("/") + "/"
        _, key = s3.split_s3_url(url)
        files, dirs = [], []
        with _s3_errors(url, "list"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=key, Delimiter="/")
            for page in pages:
                files += [o["Key"][len(key) :] for o in page.get("Contents", [])]
                dirs += [p["Prefix"][len(key) :].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return files, dirs

    def exists(self, relpath: str) -> bool:
        """Without s3:ListBucket a missing object answers 403, not 404: any refusal counts as absent."""
        url, key = self._key(relpath)
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError:
            return False
        except BotoCoreError as e:
            raise DestinationError(f"cannot stat {url}: {e}") from None


def destination(dest: str | os.PathLike | Destination) -> Destination:
    """A destination from its URL or path (or itself)."""
    return dest if isinstance(dest, Destination) else Destination(os.fspath(dest))
