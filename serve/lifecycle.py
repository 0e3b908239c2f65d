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

The whole lifecycle is here, for the ingress and the worker alike: the queue (``QUEUE``, :func:`tasks`), the status
(:class:`JobStatus`, its ``Status`` from serve/settings.py), the settings a job runs with (:func:`job_settings`), its failure record
(:func:`record_failure`) and its webhook (:func:`deliver_webhook`); the stores are in ``serve/stores.py``
(:func:`serve.stores.open_store`), which imports this module and not the other way round.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Protocol

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from framepipe import schema
from framepipe.config import Settings
from framepipe.errors import FramepipeError
from framepipe.storage import Destination
from framepipe.videorun import VideoRun
from serve import webhook
from serve.settings import ServeSettings, Status

TASK = "process_job"


class QueueSettings(BaseSettings):
    """Broker, store and queue bounds (env ``FRAMEPIPE_SERVE_<NAME>``); read at import, so no field is required."""

    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_SERVE_", frozen=True, extra="ignore")

    broker_url: str = Field("", description="redis://..., sqs://...; empty: the embedded broker (one machine).")
    store_url: str = Field("", description="redis://... for the job store; empty: the broker's Redis, else SQLite.")
    state_dir: str = Field("~/.framepipe/serve", description="Embedded broker and SQLite store live here.")
    queue_name: str = Field("framepipe-jobs", description="The broker's queue of jobs.")
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

    @property
    def embedded_queue(self) -> str:
        """The embedded broker's queue folder (a file a message)."""
        return os.path.join(self.state, "broker", "queue")


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
        queue, done = q.embedded_queue, os.path.join(q.state, "broker", "processed")
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


QUEUE = QueueSettings()  # the broker, store and queue of this process (its environment, read at import)


@functools.cache
def tasks():
    """Ray Serve's task-processor config of ``QUEUE`` (the worker's consumer and the ingress's producer)."""
    return task_processor_config(QUEUE)


class JobStatus(BaseModel):
    job_id: str
    status: Status
    source: str
    submitted_at: float
    position: int | None = Field(None, description="Place in line while queued (1 = next).")
    attempts: int = Field(0, description="Times a worker took the job (more than 1 after a redelivery).")
    request: dict = Field(default_factory=dict, description="The accepted request (settings, webhook URL).")
    result: schema.Result | None = None
    webhook: dict | None = None


class JobStore(Protocol):
    clock: Callable[[], float]  # the time its leases are reckoned in (time.time; injected by tests)

    def create(self, job: JobStatus, idempotency_key: str | None) -> tuple[JobStatus, bool]:
        """Store a new queued job, or return the job already stored under this idempotency key (created False)."""

    def get(self, job_id: str) -> JobStatus | None: ...

    def find(self, idempotency_key: str) -> JobStatus | None:
        """The job created under this idempotency key (within a day), if any."""

    def save(self, job: JobStatus) -> None:
        """Store the job's document; a job no longer queued leaves the line."""

    def queued(self) -> int: ...

    def position(self, job_id: str) -> int | None: ...

    def queued_ids(self) -> list[str]:
        """The jobs waiting in line, first first."""

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


def result_payload(job: JobStatus) -> dict:
    """The webhook body: the result document plus the job id and status."""
    return {**job.result.model_dump(mode="json"), "job_id": job.job_id, "status": job.status}


def sweep(store: JobStore, max_attempts: int, enqueue, lost, now: float | None = None) -> int:
    """Take back every job whose lease lapsed before ``now``: ``enqueue(job_id)`` the ones queued again, ``lost(job)``
    the ones failed past ``max_attempts``. Safe with several sweepers (each reclaim is atomic). Returns how many."""
    now = store.clock() if now is None else now
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


def embedded_holds(q: QueueSettings):
    """A test of whether the embedded broker's queue folder holds a message for a job (Celery writes each task's
    arguments in plain text in its headers)."""
    folder = q.embedded_queue
    messages = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        try:
            with open(os.path.join(folder, name), "rb") as f:
                messages.append(f.read())
        except OSError:  # taken by a worker meanwhile
            continue
    blob = b"\n".join(messages)
    return lambda job_id: job_id.encode() in blob


def requeue_forgotten(store: JobStore, holds, enqueue, suspects: set[str]) -> set[str]:
    """The embedded broker forgets a message as soon as a worker reads it (files: no acknowledgement), so a worker
    killed between reading a job's task and claiming its lease would lose the job: it stays queued, with no lease to
    lapse. A queued job that no message names on two sweeps in a row (``suspects``: those of the last sweep) goes on
    the broker again; a second delivery of a job that was taken meanwhile finds it claimed or done, and skips it.
    Returns the suspects of this sweep."""
    missing = {job_id for job_id in store.queued_ids() if not holds(job_id)}
    for job_id in missing & suspects:
        job = store.get(job_id)
        if job is not None and job.status == "queued":
            enqueue(job_id)
    return missing - suspects


def job_settings(base: Settings, job: JobStatus) -> Settings:
    """The settings a job runs with: the service's, with the overrides its request was accepted with."""
    return base.with_overrides(**(job.request.get("settings") or {}))


def record_failure(dest: Destination, job: JobStatus, error: FramepipeError, settings: Settings) -> schema.Result:
    """The failed result of a job that never reached the pipeline (or whose worker was lost): the end of a
    VideoRun, as the pipeline writes a failure (result.json, the manifest row)."""
    return VideoRun(job.source, dest, settings).fail(error)


def deliver_webhook(job: JobStatus, cfg: ServeSettings, store: JobStore) -> None:
    """The job's webhook, if it asked for one and it has not gone out yet; the delivery log kept with the job."""
    hook = job.request.get("webhook_url")
    if hook and not (job.webhook or {}).get("delivered"):
        d = webhook.deliver(hook, result_payload(job), cfg.secrets, job.job_id, cfg.webhook_max_attempts,
                            cfg.webhook_backoff_s, cfg.webhook_timeout_s)
        job.webhook = {"delivered": d.delivered, "attempts": d.attempts, "status": d.status, "error": d.error,
                       "log": d.log}
        store.save(job)
