"""Durable jobs: where a job lives from its 202 to its webhook, readable from any replica.

* The **queue** is a real broker driven by Celery through Ray Serve's task consumer (``ray.serve.task_consumer``):
  the ingress enqueues a ``process_job(job_id)`` task, the ``VideoWorker`` deployment consumes it with bounded
  concurrency. Tasks are acknowledged late and rejected when their worker is lost, so a job whose consumer dies is
  delivered again (at-least-once; the job id makes it idempotent: same outputs, one webhook id).
* The **store** keeps each job's status document, the idempotency keys and the queued jobs in order (their count
  bounds the queue; the order gives a job's position in line), and the **lease** of each running job.
* **Leases**: a worker takes a job by claiming its lease (:meth:`JobStore.claim`, atomic: nobody else holds a live
  lease on it) and renews it every few seconds while it works (a heartbeat). A job whose lease lapses (its worker
  died: SIGKILL, a lost node) is put back on the broker by the ingress's sweeper (:func:`sweep`), or, past
  ``max_attempts``, failed with ``worker_lost`` and its webhook, within ``lease_s`` plus one sweep of the death,
  whatever the broker's own redelivery does. A broker that delivers the task again anyway (Redis after its
  visibility timeout) finds the job taken or done: a live worker's job is never run twice at once.

Backends (``FRAMEPIPE_SERVE_BROKER_URL``):

* ``redis://host:port/db``: Redis for both (deployments, and the tests with Debian's ``redis-server``); a consumer's
  unacknowledged task is redelivered after ``FRAMEPIPE_SERVE_VISIBILITY_TIMEOUT_S``;
* ``sqs://``: Amazon SQS as the Celery broker (its visibility timeout does the redelivery) with ``STORE_URL`` a
  Redis (ElastiCache) for the store;
* empty (the default): an embedded broker that needs no server, so that ``serve run serve/config.yaml`` works on a
  laptop: Celery's filesystem transport and a SQLite store under ``FRAMEPIPE_SERVE_STATE_DIR``. One machine only;
  a job whose consumer dies is put back by its lapsed lease, as with the other brokers.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from typing import Literal, Protocol

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from framepipe import schema

TASK = "process_job"


class QueueSettings(BaseSettings):
    """Broker, store and queue bounds (env ``FRAMEPIPE_SERVE_<NAME>``); read at import, so no field is required."""

    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_SERVE_", frozen=True, extra="ignore")

    broker_url: str = Field("", description="redis://..., sqs://...; empty: the embedded broker (one machine).")
    store_url: str = Field("", description="redis://... for the job store; empty: the broker's Redis, else SQLite.")
    state_dir: str = Field("~/.framepipe/serve", description="Embedded broker and SQLite store live here.")
    queue_name: str = Field("framepipe-jobs")
    queue_max: int = Field(64, ge=1, description="Queued jobs beyond which POST answers 429.")
    visibility_timeout_s: float = Field(
        1800.0, gt=0, description="Redis/SQS: a task unacknowledged this long is delivered again by the broker (the "
        "job's lease does that sooner; a live worker's job is never taken twice). Keep it above the job timeout.")
    lease_s: float = Field(20.0, ge=2, description="A running job's lease: renewed every lease_s/4 by its worker; "
                           "lapsed, the job is put back on the broker (or failed worker_lost past max_attempts).")
    sweep_s: float = Field(5.0, gt=0, description="How often the ingress looks for lapsed leases.")
    max_attempts: int = Field(3, ge=1, description="Workers a job may lose before it fails with worker_lost.")

    @property
    def state(self) -> str:
        return os.path.abspath(os.path.expanduser(self.state_dir))


def task_processor_config(q: QueueSettings):
    """Ray Serve's task-processor config for Celery on the chosen broker."""
    from ray.serve.schema import CeleryAdapterConfig, TaskProcessorConfig

    app = {"worker_prefetch_multiplier": 1, "broker_connection_retry_on_startup": True, "result_expires": 86400}
    if q.broker_url.startswith(("redis://", "rediss://", "sqs://")):
        adapter = CeleryAdapterConfig(
            broker_url=q.broker_url,
            backend_url=q.broker_url if q.broker_url.startswith("redis") else "rpc://",
            broker_transport_options={"visibility_timeout": q.visibility_timeout_s},
            app_custom_config=app,
        )
    elif not q.broker_url:
        queue, done = os.path.join(q.state, "broker", "queue"), os.path.join(q.state, "broker", "processed")
        control = os.path.join(q.state, "broker", "control")  # kombu's default is ./control, in the working dir
        for d in (queue, done, control, os.path.join(q.state, "results")):
            os.makedirs(d, exist_ok=True)
        adapter = CeleryAdapterConfig(
            broker_url="filesystem://",
            backend_url="file://" + os.path.join(q.state, "results"),
            broker_transport_options={"data_folder_in": queue, "data_folder_out": queue, "processed_folder": done,
                                      "control_folder": control, "store_processed": False},
            app_custom_config=app,
        )
    else:
        raise ValueError(f"unsupported FRAMEPIPE_SERVE_BROKER_URL {q.broker_url!r} (redis://, sqs:// or empty)")
    return TaskProcessorConfig(queue_name=q.queue_name, adapter_config=adapter, max_retries=3)


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    source: str
    submitted_at: float
    position: int | None = Field(None, description="Place in line while queued (1 = next).")
    attempts: int = Field(0, description="Times a worker took the job (more than 1 after a redelivery).")
    request: dict = Field(default_factory=dict, description="The accepted request (settings, webhook URL).")
    result: schema.Result | None = None
    webhook: dict | None = None


class JobStore(Protocol):
    def create(self, job: JobStatus, idempotency_key: str | None) -> tuple[JobStatus, bool]:
        """Store a new queued job, or return the job already stored under this idempotency key (created False)."""

    def get(self, job_id: str) -> JobStatus | None: ...

    def find(self, idempotency_key: str) -> JobStatus | None:
        """The job created under this idempotency key (within a day), if any."""

    def save(self, job: JobStatus) -> None:
        """Store the job's document; a job no longer queued leaves the line."""

    def queued(self) -> int: ...

    def position(self, job_id: str) -> int | None: ...

    def claim(self, job_id: str, owner: str, lease_s: float) -> JobStatus | None:
        """Take the job for ``owner``: running, one more attempt, a lease of ``lease_s``; atomically, and only if no
        other owner holds a live lease on it. A finished job comes back as it is (its webhook may be due); None:
        someone alive is running it."""

    def renew(self, owner: str, job_ids: list[str], lease_s: float) -> None:
        """Extend ``owner``'s leases on these jobs (its heartbeat)."""

    def lapsed(self, now: float) -> list[str]:
        """Running jobs whose lease ran out before ``now``."""

    def reclaim(self, job_id: str, now: float, max_attempts: int) -> JobStatus | None:
        """A lapsed job, atomically taken back from its dead worker: queued again (in line), or failed when it has
        had ``max_attempts``; None if its lease is live again or it ended meanwhile."""


def _reclaimed(job: JobStatus, max_attempts: int) -> JobStatus:
    if job.attempts >= max_attempts:
        job.status = "failed"
    else:
        job.status = "queued"
    return job


IDEMPOTENCY_TTL_S = 24 * 3600


class RedisStore:
    def __init__(self, url: str, prefix: str = "framepipe:serve:"):
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        self.p = prefix

    def create(self, job: JobStatus, idempotency_key: str | None) -> tuple[JobStatus, bool]:
        if idempotency_key:
            if not self.r.set(f"{self.p}idem:{idempotency_key}", job.job_id, nx=True, ex=IDEMPOTENCY_TTL_S):
                existing = self.get(self.r.get(f"{self.p}idem:{idempotency_key}").decode())
                if existing is not None:
                    return existing, False
        seq = self.r.incr(f"{self.p}seq")
        with self.r.pipeline() as p:
            p.set(f"{self.p}job:{job.job_id}", job.model_dump_json())
            p.zadd(f"{self.p}queued", {job.job_id: seq})
            p.execute()
        return job, True

    def get(self, job_id: str) -> JobStatus | None:
        raw = self.r.get(f"{self.p}job:{job_id}")
        return JobStatus.model_validate_json(raw) if raw else None

    def find(self, idempotency_key: str) -> JobStatus | None:
        job_id = self.r.get(f"{self.p}idem:{idempotency_key}")
        return self.get(job_id.decode()) if job_id else None

    def save(self, job: JobStatus) -> None:
        with self.r.pipeline() as p:
            p.set(f"{self.p}job:{job.job_id}", job.model_dump_json())
            if job.status != "queued":
                p.zrem(f"{self.p}queued", job.job_id)
            self._end_lease(p, job)
            p.execute()

    def queued(self) -> int:
        return int(self.r.zcard(f"{self.p}queued"))

    def position(self, job_id: str) -> int | None:
        rank = self.r.zrank(f"{self.p}queued", job_id)
        return None if rank is None else int(rank) + 1

    # leases: a sorted set job -> expiry, a hash job -> owner; every change under WATCH (optimistic transactions)

    def _transact(self, job_id: str, change):
        import redis

        keys = [f"{self.p}job:{job_id}", f"{self.p}leases", f"{self.p}owners"]
        while True:
            with self.r.pipeline() as p:
                try:
                    p.watch(*keys)
                    out = change(p)
                    return out
                except redis.WatchError:
                    continue

    def claim(self, job_id: str, owner: str, lease_s: float) -> JobStatus | None:
        def change(p):
            raw = p.get(f"{self.p}job:{job_id}")
            if raw is None:
                return None
            job = JobStatus.model_validate_json(raw)
            if job.status in ("succeeded", "failed"):
                return job
            expires = p.zscore(f"{self.p}leases", job_id)
            holder = p.hget(f"{self.p}owners", job_id)
            now = time.time()
            if job.status == "running" and expires and expires > now and (holder or b"").decode() != owner:
                return None
            job.status, job.position, job.attempts = "running", None, job.attempts + 1
            p.multi()
            p.set(f"{self.p}job:{job_id}", job.model_dump_json())
            p.zrem(f"{self.p}queued", job_id)
            p.zadd(f"{self.p}leases", {job_id: now + lease_s})
            p.hset(f"{self.p}owners", job_id, owner)
            p.execute()
            return job
        return self._transact(job_id, change)

    def renew(self, owner: str, job_ids: list[str], lease_s: float) -> None:
        for job_id in job_ids:
            def change(p, job_id=job_id):
                if (p.hget(f"{self.p}owners", job_id) or b"").decode() != owner:
                    return
                p.multi()
                p.zadd(f"{self.p}leases", {job_id: time.time() + lease_s}, xx=True)
                p.execute()
            self._transact(job_id, change)

    def lapsed(self, now: float) -> list[str]:
        return [j.decode() for j in self.r.zrangebyscore(f"{self.p}leases", 0, now)]

    def reclaim(self, job_id: str, now: float, max_attempts: int) -> JobStatus | None:
        def change(p):
            expires = p.zscore(f"{self.p}leases", job_id)
            raw = p.get(f"{self.p}job:{job_id}")
            if expires is None or expires > now or raw is None:
                return None
            job = _reclaimed(JobStatus.model_validate_json(raw), max_attempts)
            seq = self.r.incr(f"{self.p}seq")
            p.multi()
            p.set(f"{self.p}job:{job_id}", job.model_dump_json())
            p.zrem(f"{self.p}leases", job_id)
            p.hdel(f"{self.p}owners", job_id)
            if job.status == "queued":
                p.zadd(f"{self.p}queued", {job_id: seq})
            p.execute()
            return job
        return self._transact(job_id, change)

    def _end_lease(self, p, job: JobStatus) -> None:
        if job.status in ("succeeded", "failed"):
            p.zrem(f"{self.p}leases", job.job_id)
            p.hdel(f"{self.p}owners", job.job_id)


class SqliteStore:
    """The embedded store: one SQLite file that every replica on this machine opens (WAL, short transactions)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS idem (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, at REAL)")
            db.execute("CREATE TABLE IF NOT EXISTS queued (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE)")
            db.execute("CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY, owner TEXT, expires REAL)")

    def _db(self) -> sqlite3.Connection:
        if getattr(self.local, "db", None) is None:
            self.local.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return self.local.db

    def create(self, job: JobStatus, idempotency_key: str | None) -> tuple[JobStatus, bool]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if idempotency_key:
                db.execute("DELETE FROM idem WHERE at < ?", (time.time() - IDEMPOTENCY_TTL_S,))
                row = db.execute("SELECT job_id FROM idem WHERE key = ?", (idempotency_key,)).fetchone()
                if row:
                    doc = db.execute("SELECT doc FROM jobs WHERE id = ?", (row[0],)).fetchone()
                    if doc:
                        db.execute("COMMIT")
                        return JobStatus.model_validate_json(doc[0]), False
                db.execute("INSERT OR REPLACE INTO idem VALUES (?, ?, ?)", (idempotency_key, job.job_id, time.time()))
            db.execute("INSERT INTO jobs VALUES (?, ?)", (job.job_id, job.model_dump_json()))
            db.execute("INSERT INTO queued (id) VALUES (?)", (job.job_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return job, True

    def get(self, job_id: str) -> JobStatus | None:
        row = self._db().execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobStatus.model_validate_json(row[0]) if row else None

    def find(self, idempotency_key: str) -> JobStatus | None:
        row = self._db().execute("SELECT job_id FROM idem WHERE key = ? AND at >= ?",
                                 (idempotency_key, time.time() - IDEMPOTENCY_TTL_S)).fetchone()
        return self.get(row[0]) if row else None

    def save(self, job: JobStatus) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job.job_id, job.model_dump_json()))
            if job.status != "queued":
                db.execute("DELETE FROM queued WHERE id = ?", (job.job_id,))
            if job.status in ("succeeded", "failed"):
                db.execute("DELETE FROM leases WHERE id = ?", (job.job_id,))

    @contextlib.contextmanager
    def _tx(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def claim(self, job_id: str, owner: str, lease_s: float) -> JobStatus | None:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            job = JobStatus.model_validate_json(row[0])
            if job.status in ("succeeded", "failed"):
                return job
            lease = db.execute("SELECT owner, expires FROM leases WHERE id = ?", (job_id,)).fetchone()
            now = time.time()
            if job.status == "running" and lease and lease[1] > now and lease[0] != owner:
                return None
            job.status, job.position, job.attempts = "running", None, job.attempts + 1
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job_id, job.model_dump_json()))
            db.execute("DELETE FROM queued WHERE id = ?", (job_id,))
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (job_id, owner, now + lease_s))
            return job

    def renew(self, owner: str, job_ids: list[str], lease_s: float) -> None:
        with self._tx() as db:
            for job_id in job_ids:
                db.execute("UPDATE leases SET expires = ? WHERE id = ? AND owner = ?",
                           (time.time() + lease_s, job_id, owner))

    def lapsed(self, now: float) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT id FROM leases WHERE expires < ?", (now,)).fetchall()]

    def reclaim(self, job_id: str, now: float, max_attempts: int) -> JobStatus | None:
        with self._tx() as db:
            lease = db.execute("SELECT expires FROM leases WHERE id = ?", (job_id,)).fetchone()
            row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if lease is None or lease[0] > now or row is None:
                return None
            job = _reclaimed(JobStatus.model_validate_json(row[0]), max_attempts)
            db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job_id, job.model_dump_json()))
            db.execute("DELETE FROM leases WHERE id = ?", (job_id,))
            if job.status == "queued":
                db.execute("INSERT OR IGNORE INTO queued (id) VALUES (?)", (job_id,))
            return job

    def queued(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM queued").fetchone()[0]

    def position(self, job_id: str) -> int | None:
        row = self._db().execute(
            "SELECT COUNT(*) FROM queued WHERE seq <= (SELECT seq FROM queued WHERE id = ?)", (job_id,)).fetchone()
        return row[0] or None


def open_store(q: QueueSettings) -> JobStore:
    url = q.store_url or (q.broker_url if q.broker_url.startswith(("redis://", "rediss://")) else "")
    if url:
        return RedisStore(url)
    if q.broker_url:
        raise ValueError("FRAMEPIPE_SERVE_STORE_URL (redis://...) is needed with this broker")
    return SqliteStore(os.path.join(q.state, "jobs.sqlite"))


def result_payload(job: JobStatus) -> dict:
    """The webhook body: the result document plus the job id and status."""
    return {**job.result.model_dump(mode="json"), "job_id": job.job_id, "status": job.status}


def sweep(store: JobStore, max_attempts: int, enqueue, lost, now: float | None = None) -> int:
    """Take back every job whose lease lapsed before ``now``: ``enqueue(job_id)`` the ones queued again, ``lost(job)``
    the ones failed past ``max_attempts``. Safe with several sweepers (each reclaim is atomic). Returns how many."""
    now = time.time() if now is None else now
    done = 0
    for job_id in store.lapsed(now):
        job = store.reclaim(job_id, now, max_attempts)
        if job is None:
            continue
        done += 1
        if job.status == "queued":
            enqueue(job_id)
        else:
            lost(job)
    return done
