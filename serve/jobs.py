"""Durable jobs: where a job lives from its 202 to its webhook, readable from any replica.

* The **queue** is a real broker driven by Celery through Ray Serve's task consumer (``ray.serve.task_consumer``):
  the ingress enqueues a ``process_job(job_id)`` task, the ``VideoWorker`` deployment consumes it with bounded
  concurrency. Tasks are acknowledged late and rejected when their worker is lost, so a job whose consumer dies is
  delivered again (at-least-once; the job id makes it idempotent: same outputs, one webhook id).
* The **store** keeps each job's status document, the idempotency keys and the queued jobs in order (their count
  bounds the queue; the order gives a job's position in line).

Backends (``FRAMEPIPE_SERVE_BROKER_URL``):

* ``redis://host:port/db``: Redis for both (deployments, and the tests with Debian's ``redis-server``); a consumer's
  unacknowledged task is redelivered after ``FRAMEPIPE_SERVE_VISIBILITY_TIMEOUT_S``;
* ``sqs://``: Amazon SQS as the Celery broker (its visibility timeout does the redelivery) with ``STORE_URL`` a
  Redis (ElastiCache) for the store;
* empty (the default): an embedded broker that needs no server, so that ``serve run serve/config.yaml`` works on a
  laptop: Celery's filesystem transport and a SQLite store under ``FRAMEPIPE_SERVE_STATE_DIR``. One machine only, and
  a job whose consumer dies is not redelivered: use Redis for anything shared.
"""

from __future__ import annotations

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
        1800.0, gt=0, description="Redis/SQS: a task unacknowledged this long (its consumer died) is delivered again. "
        "Keep it above the job timeout.")

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
            p.execute()

    def queued(self) -> int:
        return int(self.r.zcard(f"{self.p}queued"))

    def position(self, job_id: str) -> int | None:
        rank = self.r.zrank(f"{self.p}queued", job_id)
        return None if rank is None else int(rank) + 1


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
        db = self._db()
        db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?)", (job.job_id, job.model_dump_json()))
        if job.status != "queued":
            db.execute("DELETE FROM queued WHERE id = ?", (job.job_id,))

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
