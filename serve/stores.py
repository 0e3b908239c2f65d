"""The two job stores behind ``serve.lifecycle.JobStore``: Redis (deployments; optimistic transactions with WATCH) and
SQLite (the embedded default: one file every replica on the machine opens, short IMMEDIATE transactions)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from typing import Callable

from serve.lifecycle import JobStatus, JobStore, QueueSettings


def _reclaimed(job: JobStatus, max_attempts: int) -> JobStatus:
    if job.attempts >= max_attempts:
        job.status = "failed"
    else:
        job.status = "queued"
    return job


IDEMPOTENCY_TTL_S = 24 * 3600


class RedisStore:
    def __init__(self, url: str, prefix: str = "framepipe:serve:", clock: Callable[[], float] = time.time):
        """``clock``: the time leases and idempotency keys are reckoned in (injected by tests)."""
        import redis

        self.r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
        self.p = prefix
        self.clock = clock

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

    def queued_ids(self) -> list[str]:
        return [k.decode() if isinstance(k, bytes) else k for k in self.r.zrange(f"{self.p}queued", 0, -1)]

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
            now = self.clock()
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
                p.zadd(f"{self.p}leases", {job_id: self.clock() + lease_s}, xx=True)
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

    def __init__(self, path: str, clock: Callable[[], float] = time.time):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.clock = clock  # the time leases and idempotency keys are reckoned in (injected by tests)
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
                db.execute("DELETE FROM idem WHERE at < ?", (self.clock() - IDEMPOTENCY_TTL_S,))
                row = db.execute("SELECT job_id FROM idem WHERE key = ?", (idempotency_key,)).fetchone()
                if row:
                    doc = db.execute("SELECT doc FROM jobs WHERE id = ?", (row[0],)).fetchone()
                    if doc:
                        db.execute("COMMIT")
                        return JobStatus.model_validate_json(doc[0]), False
                db.execute("INSERT OR REPLACE INTO idem VALUES (?, ?, ?)", (idempotency_key, job.job_id, self.clock()))
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
                                 (idempotency_key, self.clock() - IDEMPOTENCY_TTL_S)).fetchone()
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
            now = self.clock()
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
                           (self.clock() + lease_s, job_id, owner))

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

    def queued_ids(self) -> list[str]:
        return [r[0] for r in self._db().execute("SELECT id FROM queued ORDER BY seq").fetchall()]

    def position(self, job_id: str) -> int | None:
        row = self._db().execute(
            "SELECT COUNT(*) FROM queued WHERE seq <= (SELECT seq FROM queued WHERE id = ?)", (job_id,)).fetchone()
        return row[0] or None


def open_store(q: QueueSettings) -> JobStore:
    """The job store of ``q``: Redis (its own URL or the broker's), else SQLite in the state folder."""
    url = q.store_url or (q.broker_url if q.broker_url.startswith(("redis://", "rediss://")) else "")
    if url:
        return RedisStore(url)
    if q.broker_url:
        raise ValueError("FRAMEPIPE_SERVE_STORE_URL (redis://...) is needed with this broker")
    return SqliteStore(os.path.join(q.state, "jobs.sqlite"))
