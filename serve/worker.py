"""``VideoWorker``: consumes jobs from the broker (a Ray Serve task consumer on Celery), runs framepipe's per-video
pipeline under a lease (serve/lifecycle.py), then the webhook."""

import logging
import threading
import time
import uuid

from ray import serve
from ray.serve.task_consumer import task_consumer, task_handler

from framepipe import pipeline, schema
from framepipe.config import Settings
from framepipe.errors import ErrorCode, ModelUnavailable
from framepipe.framesource import Cancel
from framepipe.storage import Destination
from serve import lifecycle, stores
from serve.lifecycle import QUEUE, JobStatus, deliver_webhook, job_settings, record_failure
from serve.model import HandleAnalyzer
from serve.settings import ServeSettings

log = logging.getLogger("framepipe.serve")

MODEL_RETRIES, MODEL_WAIT_S = 6, 10.0  # a job whose model deployment is down waits up to a minute for it


@serve.deployment(max_ongoing_requests=2, ray_actor_options={"num_cpus": 0.5})
@task_consumer(task_processor_config=lifecycle.tasks())
class VideoWorker:
    """Consumes jobs from the broker, at most ``max_ongoing_requests`` at once (Celery threads)."""

    def __init__(self, model):
        self.cfg = ServeSettings()
        self.settings = Settings().with_overrides(follow_redirects=False)
        self.model = model
        self.dest = Destination(self.cfg.output, timeout_s=self.settings.http_timeout_s)
        self.store = stores.open_store(QUEUE)
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"  # this replica process: the holder of its jobs' leases
        self.active: set[str] = set()
        threading.Thread(target=self._heartbeat, name="leases", daemon=True).start()

    def ready(self) -> bool:
        return True

    def _heartbeat(self) -> None:
        """Renew the leases of the jobs this replica runs, four times a lease: while it lives, nobody takes them."""
        while True:
            time.sleep(QUEUE.lease_s / 4)
            try:
                if self.active:
                    self.store.renew(self.owner, sorted(self.active), QUEUE.lease_s)
            except Exception:  # the store unreachable for a moment: the next beat tries again
                log.exception("renewing leases")

    @task_handler(name=lifecycle.TASK)
    def process_job(self, job_id: str) -> str:
        """Run one job to its end, under a lease (``serve/lifecycle.py``). Delivered again after a worker died: a
        finished job only gets its webhook (if that had not gone out), an unfinished one runs again and writes the
        same outputs; a job another live worker holds is left to it."""
        job = self.store.claim(job_id, self.owner, QUEUE.lease_s)
        if job is None:
            if self.store.get(job_id) is None:
                log.error("job %s is not in the store", job_id)
                return "unknown"
            return "taken"  # a duplicate delivery while its worker lives
        if job.status not in ("succeeded", "failed"):
            self.active.add(job_id)
            try:
                result = self._run(job)
                for _ in range(MODEL_RETRIES):  # a model replica restarting (killed, its node lost): wait, run again
                    if not (result.error and result.error.type == ModelUnavailable.code):
                        break
                    time.sleep(MODEL_WAIT_S)
                    result = self._run(job)
                job.result, job.status = self._presigned(result), result.status
                self.store.save(job)
            finally:
                self.active.discard(job_id)
        deliver_webhook(job, self.cfg, self.store)
        return job.status

    def _run(self, job: JobStatus) -> schema.Result:
        """framepipe's pipeline; on timeout it is told to stop (checked between frames, decoders closed in their own
        threads) and writes its own failed record: one result per run, never a late success after the failure."""
        settings = job_settings(self.settings, job)
        try:
            analyzer = HandleAnalyzer(self.model, self.model.info.remote().result(), settings.analyze_batch)
        except Exception as e:  # the model deployment is down: the job fails, retryable by the caller
            return record_failure(self.dest, job, ModelUnavailable(type(e).__name__), settings)
        cancel = Cancel()
        timer = threading.Timer(self.cfg.job_timeout_s, cancel.stop,
                                (ErrorCode.TIMEOUT, f"over {self.cfg.job_timeout_s:.0f} s"))
        timer.daemon = True
        timer.start()
        try:
            return pipeline.process_video(job.source, self.dest, settings, analyzer, cancel=cancel)
        finally:
            timer.cancel()

    def _presigned(self, result: schema.Result) -> schema.Result:
        if not (self.cfg.presign_seconds and self.dest.is_s3):
            return result
        sign = lambda url: self.dest.presign(url, self.cfg.presign_seconds)  # noqa: E731
        talent = [t.model_copy(update={"signed_url": sign(t.url), "signed_face_url": sign(t.face_url)})
                  for t in result.talent_frames]
        reps = [r.model_copy(update={"signed_url": sign(r.url)}) for r in result.representative_frames]
        return result.model_copy(update={"talent_frames": talent, "representative_frames": reps})
