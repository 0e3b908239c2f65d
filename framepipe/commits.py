"""Atomic, versioned commits of a set of files on a destination (a local folder or S3): what the person registry
stands on.

Layout under a root folder (``DEST/registry``):

* ``_log/<version, 20 digits>.json``: the commit of one version: which data file holds each named part, and a
  small ``meta`` document. Created once, never changed;
* ``data/<random>-<name>``: the data files, each written once under a fresh name before the commit that points
  to it, never overwritten.

A version is committed by creating its log entry **only if no entry of that number exists**: on S3 a ``PutObject``
with ``If-None-Match: *`` (S3's conditional write), on a local disk a complete temporary file hard-linked to the
final name (``link`` fails when the name exists). Exactly one writer wins each version number; the others get
:class:`Conflict`, read the new version and apply their change again (:func:`transact`). This is the commit
protocol of Delta Lake and Iceberg (optimistic concurrency on one atomic create), used here because the
registry's unit of change spans three files (persons, members, the vector index) that a table format would commit
one table at a time; it needs no lock, so a writer killed at any point blocks nobody and leaves the last version
whole (its data files are unreferenced garbage, pruned later). Readers take the highest committed version
(S3's listing is strongly consistent) and read exactly the files it names.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import pyarrow as pa

from framepipe.errors import DamagedDestination, DestinationError
from framepipe.storage import AlreadyExists, Destination

log = logging.getLogger(__name__)

T = TypeVar("T")
LOG, DATA = "_log", "data"
KEEP_VERSIONS = 20  # older log entries, and data files only they name, are pruned after a commit


class Conflict(Exception):
    """Another writer committed this version number first."""


@dataclass(frozen=True)
class Version:
    number: int  # 0: nothing committed yet
    files: dict[str, str] = field(default_factory=dict)  # part name -> data file, relative to the root
    meta: dict = field(default_factory=dict)
    entry: int | None = None  # the log entry it was read from, when older than ``number`` (a damaged one above it)


def _entry(number: int) -> str:
    return f"{LOG}/{number:020d}.json"


def versions(d: Destination, root: str) -> list[int]:
    """Committed version numbers, ascending."""
    return sorted(int(n[:-5]) for n in d.list(f"{root}/{LOG}") if n.endswith(".json") and n[:-5].isdigit())


def latest(d: Destination, root: str) -> Version:
    """The highest committed version (``Version(0)`` when nothing is committed, or nothing readable); a damaged
    log entry (truncated, emptied) stands for the newest readable one below it (:func:`good`)."""
    return next(good(d, root), Version(0))


DAMAGED: set[str] = set()  # files (relative to the destination) this process found damaged and did without
# what reading a damaged data file raises: Arrow's errors (Parquet: "magic bytes not found"...), the index's
DAMAGE = (pa.ArrowException, RuntimeError, EOFError)


def _damaged(d: Destination, relpath: str, reason: str) -> None:
    if relpath not in DAMAGED:
        DAMAGED.add(relpath)
        log.warning("%s is damaged (%s): using the version before it", d.url(relpath), reason)


def good(d: Destination, root: str) -> Iterator[Version]:
    """The committed versions whose log entries can be read, newest first, each numbered as the newest entry (a
    commit goes after a damaged entry, never onto its number): what a reader falls back to, one version at a
    time, when the files of a newer one cannot be read (:func:`first_readable`)."""
    return _good(d, root, versions(d, root))


def _good(d: Destination, root: str, found: list[int]) -> Iterator[Version]:
    for n in reversed(found):
        try:
            doc = json.loads(d.read(f"{root}/{_entry(n)}"))
            version = Version(int(doc["version"]), dict(doc["files"]), dict(doc.get("meta", {})))
        except (ValueError, KeyError, TypeError) as e:
            _damaged(d, f"{root}/{_entry(n)}", type(e).__name__)
            continue
        yield version if n == found[-1] else Version(found[-1], version.files, version.meta, entry=n)


def first_readable(d: Destination, root: str, use: Callable[[Version], T]) -> T:
    """``use(version)`` of the newest version whose files can be read: one whose data file is damaged is reported
    (:data:`DAMAGED`) and the one before it used. :class:`DamagedDestination` when none can be read."""
    found = versions(d, root)
    if not found:
        return use(Version(0))
    last = None
    for version in _good(d, root, found):
        try:
            return use(version)
        except DAMAGE as e:
            last = e
            _damaged(d, f"{root}/{_entry(version.entry or version.number)}",
                     f"a file it names: {type(e).__name__}: {str(e)[:80]}")
    raise DamagedDestination(f"no version of {d.url(root)} can be read ({type(last).__name__}: {str(last)[:120]}); "
                             "framepipe people DEST --check lists the damaged files")


def read(d: Destination, root: str, version: Version, name: str) -> bytes:
    return d.read(f"{root}/{version.files[name]}")


def commit(d: Destination, root: str, base: Version, parts: dict[str, bytes | Callable[[], bytes]], meta: dict,
           keep: dict[str, str] | None = None) -> Version:
    """Commit version ``base.number + 1``: ``parts`` written as new data files (a part may be a function giving
    its bytes: made when written, so that large parts are not all in memory at once), ``keep`` (part name -> data
    file) carried over unchanged. Raises :class:`Conflict` if that version was committed by someone else
    meanwhile."""
    files = dict(keep or {})
    for name, data in parts.items():
        rel = f"{DATA}/{uuid.uuid4().hex[:16]}-{name.replace('/', '__')}"
        d.write(f"{root}/{rel}", data() if callable(data) else data)
        files[name] = rel
    number = base.number + 1
    doc = {"version": number, "files": files, "meta": meta, "committed_at": time.time()}
    try:
        d.create(f"{root}/{_entry(number)}", json.dumps(doc, indent=1).encode())
    except AlreadyExists:
        raise Conflict(f"version {number}") from None
    newer = [n for n in versions(d, root) if n > number]
    if newer:  # a writer that slept past KEEP_VERSIONS commits: its number was free again once pruned; readers
        # take the highest version, so this one would never be read. Withdrawn, and applied again on the newest.
        d.delete(f"{root}/{_entry(number)}")
        raise Conflict(f"version {number} was pruned; {newer[-1]} is the newest")
    try:
        _prune(d, root, number)
    except Exception as e:  # housekeeping only: the commit stands
        log.warning("pruning %s: %s", d.url(root), e)
    return Version(number, files, meta)


def transact(d: Destination, root: str, change: Callable[[Version], tuple[dict[str, bytes], dict, dict[str, str]]],
             attempts: int = 50) -> Version:
    """Read the latest version, let ``change(version)`` return (new parts, meta, parts kept), commit; on a
    :class:`Conflict` read the newer version and apply the change again."""
    for attempt in range(attempts):
        # the newest version whose files can be read: a damaged one is passed over (and replaced by this commit)
        base, (parts, meta, keep) = first_readable(d, root, lambda v: (v, change(v)))
        try:
            return commit(d, root, base, parts, meta, keep)
        except Conflict:
            log.info("%s: version %d was committed meanwhile; applying the change again", d.url(root),
                     base.number + 1)
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    raise DestinationError(f"{d.url(root)}: gave up after {attempts} conflicting commits")


def _prune(d: Destination, root: str, newest: int) -> None:
    """Drop log entries more than KEEP_VERSIONS behind ``newest`` and the data files no kept entry names."""
    found = versions(d, root)
    old = [n for n in found if n <= newest - KEEP_VERSIONS]
    if not old:
        return
    kept = set()
    for n in (n for n in found if n > newest - KEEP_VERSIONS):
        try:
            kept |= set(json.loads(d.read(f"{root}/{_entry(n)}"))["files"].values())
        except Exception:  # an entry being written right now: keep everything this time
            return
    for n in old:
        d.delete(f"{root}/{_entry(n)}")
    for name in d.list(f"{root}/{DATA}"):
        if f"{DATA}/{name}" not in kept and _older_than(d, f"{root}/{DATA}/{name}", 600):
            d.delete(f"{root}/{DATA}/{name}")


def _older_than(d: Destination, relpath: str, seconds: float) -> bool:
    """A data file old enough that no writer still on its way to a commit can name it."""
    return time.time() - d.mtime(relpath) > seconds
