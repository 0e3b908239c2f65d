"""Ray Serve application: one video per request over HTTP, durable jobs, results on a Standard Webhook.

Three deployments, split by resource profile:

* ``VideoIngress`` (FastAPI, CPU, light): authenticates (before reading a body), validates, refuses what would reach
  private addresses, pushes back (429 + ``Retry-After`` beyond ``FRAMEPIPE_SERVE_QUEUE_MAX`` queued jobs), honours
  ``Idempotency-Key``, stores the job and puts it on the broker before answering 202; answers status from the store
  (any replica can). Its blocking calls run on its own small thread pool, never on the event loop.
* ``VideoWorker`` (CPU): a Ray Serve task consumer (Celery on the broker, ``serve/jobs.py``) running at most
  ``max_ongoing_requests`` jobs at once: framepipe's per-video pipeline (``pipeline.process_video``) with
  :class:`HandleAnalyzer`, a cooperative timeout, then the webhook. Tasks are acknowledged late: a job whose worker
  dies is delivered again and finishes (same outputs, same webhook id).
* ``FaceModel`` (GPU where there is one): holds the models once and batches frames across all jobs with
  ``@serve.batch``.

Run it with ``serve run serve/config.yaml`` (or ``serve deploy``); settings come from the environment
(``FRAMEPIPE_SERVE_*``: :class:`ServeSettings`, ``serve.jobs.QueueSettings``; the pipeline's ``FRAMEPIPE_*``).
"""

import asyncio
import functools
import hmac
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal
from urllib.parse import urlparse

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve
from ray.exceptions import RayError
from ray.serve.task_consumer import instantiate_adapter_from_config, task_consumer, task_handler

from framepipe import ids, outputs, pipeline, schema, sources
from framepipe import search as find
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError, InputTooLarge, ModelUnavailable, SourceNotFound, WorkerLost
from framepipe.faces import load_face_model
from framepipe.framesource import Cancel
from framepipe.storage import Destination
from serve import jobs, webhook
from serve.jobs import JobStatus

log = logging.getLogger("framepipe.serve")

BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # plus the rules in VideoRequest._one_source
URL_RE = r"^https?://[!-~]+$"  # printable ASCII, no space, tab or control character
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MODEL_RETRIES, MODEL_WAIT_S = 6, 10.0  # a job whose model deployment is down waits up to a minute for it
QUEUE = jobs.QueueSettings()
TASKS = jobs.task_processor_config(QUEUE)  # the task consumer's decorator needs it at import


class ServeSettings(BaseSettings):
    """The service's own settings (env ``FRAMEPIPE_SERVE_<NAME>``); the pipeline's come from ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_SERVE_", frozen=True, extra="ignore")

    api_token: SecretStr = Field(description="Bearer token that every request must carry.")
    webhook_secret: SecretStr = Field(
        description="Standard Webhooks secret(s), whsec_<base64>; several, comma-separated, during a rotation (each "
        "delivery is signed with all of them).")
    webhook_allowed_hosts: str = Field("", description="Comma-separated hosts webhooks may go to (*.x.com ok).")
    webhook_ports: str = Field("80,443", description="Ports webhook URLs may name (comma-separated; * for any).")
    source_allowed_hosts: str = Field("", description="Comma-separated hosts that `url` sources may name "
                                      "(empty: S3 sources only). Keeps the service from fetching arbitrary URLs.")
    allow_private_networks: bool = Field(
        False, description="Let webhooks and url sources reach loopback, link-local and private addresses (tests, "
        "internal receivers). Off: their hosts must resolve to public addresses only.")
    output: str = Field(description="Where outputs go: s3://bucket/prefix or a local directory.")
    presign_seconds: int = Field(0, ge=0, description="> 0: results also carry presigned URLs valid this long.")
    job_timeout_s: float = Field(900.0, gt=0, description="A job running longer fails with a timeout.")
    max_body_bytes: int = Field(65536, ge=1024, description="Larger request bodies are refused (413) unread.")
    search_max_bytes: int = Field(10 * 1024**2, ge=1024, description="POST /v1/search: larger images (uploaded or "
                                  "in S3) are refused (413), uploads unread.")
    search_max_side: int = Field(2560, ge=256, description="POST /v1/search: an image is decoded to at most this "
                                 "many pixels on its longer side (JPEGs at a reduced scale straight away).")
    search_concurrency: int = Field(2, ge=1, description="POST /v1/search requests read, decoded and analysed at "
                                    "once per ingress replica; the others wait, their bodies unread (bounds memory).")
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        for secret in value.get_secret_value().split(","):
            try:
                webhook.sign([secret.strip()], "check", 0, b"")
            except Exception:
                raise ValueError("each webhook secret must be whsec_<base64>") from None
        return value

    @property
    def secrets(self) -> list[str]:
        return [s.strip() for s in self.webhook_secret.get_secret_value().split(",") if s.strip()]

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.webhook_allowed_hosts.split(",") if h.strip()]

    @property
    def source_hosts(self) -> list[str]:
        return [h.strip() for h in self.source_allowed_hosts.split(",") if h.strip()]


@functools.lru_cache(maxsize=1)
def serve_settings() -> ServeSettings:
    return ServeSettings()


class RequestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sample_fps: float | None = Field(None, gt=0, le=5)
    sampling: Literal["exact", "keyframes"] | None = None
    require_faces: bool | None = None


def _check_object(bucket: str, key: str) -> None:
    """The rules of S3 bucket names and of plain object keys that a pattern alone cannot say."""
    if ".." in bucket or bucket.startswith("xn--") or re.fullmatch(r"[0-9.]+", bucket):
        raise ValueError("bucket is not a valid S3 bucket name")
    parts = key.split("/")
    if key.startswith("/") or ".." in parts or "." in parts or any(ord(c) < 32 for c in key):
        raise ValueError("key must be a plain object key (no leading '/', no '.' or '..' parts)")


class VideoRequest(BaseModel):
    """A video in S3 (``bucket`` + ``key``) or at an http(s) ``url``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    bucket: str | None = Field(None, min_length=3, max_length=63, pattern=BUCKET_RE)
    key: str | None = Field(None, min_length=1, max_length=1024)
    url: str | None = Field(None, max_length=4096, pattern=URL_RE)
    webhook_url: str | None = Field(None, max_length=2048, pattern=URL_RE)
    settings: RequestSettings | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bucket is None) != (self.key is None):
            raise ValueError("give both bucket and key")
        if (self.bucket is None) == (self.url is None):
            raise ValueError("give either bucket and key, or url")
        if self.bucket is not None:
            _check_object(self.bucket, self.key)
        for name in ("url", "webhook_url"):
            value = getattr(self, name)
            if value is not None:
                try:
                    urlparse(value).port
                except ValueError:
                    raise ValueError(f"{name} is not a valid URL") from None
        return self

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else str(self.url)


class SearchRequest(BaseModel):
    """A photo in S3 to search with (or send the image itself as the body: image/jpeg, image/png, image/webp)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    bucket: str = Field(min_length=3, max_length=63, pattern=BUCKET_RE)
    key: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _plain(self):
        _check_object(self.bucket, self.key)
        return self


IMAGE_TYPES = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",), "image/webp": (b"RIFF",)}


def decode_image(data: bytes, max_pixels: int, max_side: int = 2560):
    """BGR pixels of an uploaded JPEG, PNG or WebP (EXIF orientation applied), at most ``max_side`` pixels on the
    longer side, or ValueError. The size is read from the header first: a small file that would decode to a huge
    picture is refused undecoded; a JPEG is decoded straight at a reduced scale (libjpeg's DCT scaling)."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    if not any(data.startswith(m) for magics in IMAGE_TYPES.values() for m in magics):
        raise ValueError("not a JPEG, PNG or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(f"image of {width}x{height} pixels is over the limit")
            im.draft("RGB", (max_side, max_side))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale when that is enough
            im.thumbnail((max_side, max_side))  # others: decoded once, reduced in place
            image = ImageOps.exif_transpose(im)  # on the small picture
            if image.mode != "RGB":
                image = image.convert("RGB")
    except ValueError:
        raise
    except Exception:
        raise ValueError("not a readable image") from None
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


class Accepted(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]  # not "queued" only for a repeated Idempotency-Key
    status_url: str


api = FastAPI(title="framepipe", version="1", description="Find the people in a video.")
bearer = HTTPBearer(auto_error=False)  # documents the scheme in OpenAPI; the check itself is `guard` below


@api.middleware("http")
async def guard(request: Request, call_next):
    """Before any body is read: the bearer token, then the body's declared size (413 unread, 411 without a length)."""
    if request.url.path.startswith("/v1/"):
        cfg = serve_settings()
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), cfg.api_token.get_secret_value().encode()):
            return JSONResponse({"detail": "missing or wrong bearer token"}, 401, headers={"WWW-Authenticate": "Bearer"})
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length", "")
            cap = cfg.search_max_bytes if request.url.path == "/v1/search" else cfg.max_body_bytes
            if not length.isdigit():
                return JSONResponse({"detail": "a Content-Length is required"}, 411)
            if int(length) > cap:
                return JSONResponse({"detail": f"body over {cap} bytes"}, 413)
    return await call_next(request)


@api.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 that says what is wrong and where, and never echoes the input back."""
    return JSONResponse({"detail": _error_list(exc.errors())}, 422)


def _error_list(errors) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in errors]


@serve.deployment(ray_actor_options={"num_cpus": 1})
class FaceModel:
    """The face models, once per replica; frames from every caller are batched together."""

    def __init__(self):
        self.model = load_face_model(Settings())

    def info(self) -> dict:
        return {"device": self.model.device, "pack": self.model.pack}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def analyze(self, images: list) -> list:
        return self.model.analyze_batch(images)


class HandleAnalyzer:
    """The FaceModel deployment as the pipeline's analyzer. Called from a worker thread: a batch of frames goes out as
    concurrent calls, which ``@serve.batch`` groups with other jobs' frames."""

    def __init__(self, handle, info: dict, batch_size: int):
        self.handle, self.device, self.pack, self.batch_size = handle, info["device"], info["pack"], batch_size

    def analyze(self, images):
        try:
            responses = [self.handle.analyze.remote(image) for image in images]
            return [r.result() for r in responses]
        except RayError as e:  # the model replica died or restarts: the job is run again once it is back
            raise ModelUnavailable(f"the model deployment failed: {type(e).__name__}") from None


@serve.deployment(max_ongoing_requests=2, ray_actor_options={"num_cpus": 0.5})
@task_consumer(task_processor_config=TASKS)
class VideoWorker:
    """Consumes jobs from the broker, at most ``max_ongoing_requests`` at once (Celery threads)."""

    def __init__(self, model):
        self.cfg = ServeSettings()
        self.settings = Settings().with_overrides(follow_redirects=False)
        self.model = model
        self.dest = Destination(self.cfg.output, timeout_s=self.settings.http_timeout_s)
        self.store = jobs.open_store(QUEUE)
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

    @task_handler(name=jobs.TASK)
    def process_job(self, job_id: str) -> str:
        """Run one job to its end, under a lease (``serve/jobs.py``). Delivered again after a worker died: a
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
        settings = self.settings.with_overrides(**(job.request.get("settings") or {}))
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


def record_failure(dest: Destination, job: JobStatus, error: FramepipeError, settings: Settings) -> schema.Result:
    """The failed result of a job that never reached the pipeline (or whose worker was lost), written as the
    pipeline writes a failure (result.json, the manifest row)."""
    return outputs.record_failure(dest, ids.video_id(job.source), schema.VideoMeta(source=job.source), error,
                                  outputs.processing_doc(settings, 0.0, "cpu", None, None, 0, 0), None, settings)


def deliver_webhook(job: JobStatus, cfg: ServeSettings, store: jobs.JobStore) -> None:
    """The job's webhook, if it asked for one and it has not gone out yet; the delivery log kept with the job."""
    hook = job.request.get("webhook_url")
    if hook and not (job.webhook or {}).get("delivered"):
        d = webhook.deliver(hook, jobs.result_payload(job), cfg.secrets, job.job_id, cfg.webhook_max_attempts,
                            cfg.webhook_backoff_s, cfg.webhook_timeout_s)
        job.webhook = {"delivered": d.delivered, "attempts": d.attempts, "status": d.status, "error": d.error,
                       "log": d.log}
        store.save(job)


def _accepted(job: JobStatus) -> Accepted:
    return Accepted(job_id=job.job_id, status=job.status, status_url=f"/v1/videos/{job.job_id}")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class VideoIngress:
    def __init__(self, worker, model):
        self.cfg = serve_settings()
        self.settings = Settings().with_overrides(follow_redirects=False)
        self.worker, self.model = worker, model  # handles: they make the worker and the model part of this app
        self.dest = Destination(self.cfg.output, timeout_s=self.settings.http_timeout_s)
        self.store = jobs.open_store(QUEUE)
        self.broker = instantiate_adapter_from_config(TASKS)
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="ingress")  # its own: never starved by other work
        self.search_slots = asyncio.Semaphore(self.cfg.search_concurrency)
        threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True).start()

    def _sweep_forever(self) -> None:
        """Jobs whose worker died (their lease lapsed) go back on the broker, or fail ``worker_lost`` with their
        webhook once they have lost ``max_attempts`` workers. Also what a restart of ``serve run`` finds running."""
        while True:
            time.sleep(QUEUE.sweep_s)
            try:
                jobs.sweep(self.store, QUEUE.max_attempts, self._enqueue, self._lost)
            except Exception:
                log.exception("sweeping lapsed leases")

    def _enqueue(self, job_id: str) -> None:
        self.broker.enqueue_task_sync(jobs.TASK, args=[job_id], task_id=uuid.uuid4().hex)

    def _lost(self, job: JobStatus) -> None:
        settings = self.settings.with_overrides(**(job.request.get("settings") or {}))
        error = WorkerLost(f"the worker running this job stopped {job.attempts} times (SIGKILL, a lost node)")
        job.result = record_failure(self.dest, job, error, settings)
        self.store.save(job)
        self.pool.submit(deliver_webhook, job, self.cfg, self.store)

    async def _blocking(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def _source_call(self, fn, *args):
        """A call that reads a source, its typed failures as HTTP answers: 404 missing, 413 too large, 422 else."""
        try:
            return await self._blocking(fn, *args)
        except SourceNotFound as e:
            raise HTTPException(404, e.message) from None
        except InputTooLarge as e:
            raise HTTPException(413, e.message) from None
        except FramepipeError as e:
            raise HTTPException(422, e.line) from None

    # ---- endpoints --------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.post("/v1/videos", status_code=202, response_model=Accepted, dependencies=[Depends(bearer)],
              responses={429: {"description": "queue full: retry after the Retry-After header's seconds"}})
    async def submit(
        self, body: VideoRequest, idempotency_key: Annotated[str | None, Header(max_length=255)] = None
    ):
        cfg = self.cfg
        for name, url, hosts in (("webhook_url", body.webhook_url, cfg.allowed_hosts),
                                 ("url", body.url, cfg.source_hosts)):
            if url is None:
                continue
            what = "webhook_url host" if name == "webhook_url" else "url host"
            if not webhook.host_allowed(url, hosts):
                raise HTTPException(422, f"{what} is not on the allow-list" + (" of sources" if name == "url" else ""))
            if name == "webhook_url" and not webhook.port_allowed(url, cfg.webhook_ports):
                raise HTTPException(422, "webhook_url port is not allowed")
            if not cfg.allow_private_networks and not await self._blocking(webhook.public_only, url):
                raise HTTPException(422, f"{what} does not resolve to public addresses only")
        if idempotency_key:  # a retried POST: the job it made before, whatever the queue holds now
            known = await self._blocking(self.store.find, idempotency_key)
            if known is not None:
                return _accepted(known)
        if await self._blocking(self.store.queued) >= QUEUE.queue_max:
            raise HTTPException(429, f"{QUEUE.queue_max} jobs are waiting: retry later", headers={"Retry-After": "10"})
        overrides = body.settings.model_dump(exclude_none=True) if body.settings else {}
        settings = self.settings.with_overrides(**overrides)
        # fail fast on what a HEAD can tell: missing object, too large
        await self._source_call(sources.resolve, body.source, settings.http_timeout_s, settings.max_bytes, False)
        job = JobStatus(job_id=uuid.uuid4().hex, status="queued", source=body.source, submitted_at=time.time(),
                        request={"settings": overrides, "webhook_url": body.webhook_url})
        job, created = await self._blocking(self.store.create, job, idempotency_key)
        if created:
            await self._blocking(self.broker.enqueue_task_sync, jobs.TASK, args=[job.job_id], task_id=job.job_id)
        return _accepted(job)

    @api.post("/v1/search", dependencies=[Depends(bearer)],
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": SearchRequest.model_json_schema()},
                  **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}}}})
    async def search(self, request: Request, top: Annotated[int, Query(ge=1, le=100)] = 10,
                     face: Annotated[int | None, Query(ge=0, le=100)] = None):
        """Where the person of a photo appears: each face of the photo (largest first), and the destination's
        people most like the chosen one (``framepipe search``'s ranking), best first."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json" and ctype not in IMAGE_TYPES:
            raise HTTPException(415, "send application/json (bucket, key) or the image (image/jpeg, png, webp)")
        async with self.search_slots:  # a few at once: bodies, pixels and faces of the others wait unread
            return await self._search(request, ctype, top, face)

    async def _search(self, request: Request, ctype: str, top: int, face: int | None):
        cap = self.cfg.search_max_bytes
        if ctype == "application/json":
            try:
                body = SearchRequest.model_validate_json(await request.body())
            except ValidationError as e:
                return JSONResponse({"detail": _error_list(e.errors())}, 422)
            data = await self._source_call(sources.read_object, f"s3://{body.bucket}/{body.key}", cap,
                                           self.settings.http_timeout_s)
        else:
            data = await request.body()  # its size was checked before it was read
        try:
            image = await self._blocking(decode_image, data, self.settings.max_pixels, self.cfg.search_max_side)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        del data
        try:
            info = await self.model.info.remote()
            faces = await self._blocking(find.faces_in_image, image, HandleAnalyzer(self.model, info, 1))
        except (ModelUnavailable, RayError) as e:
            raise HTTPException(503, "the model deployment is restarting: retry", headers={"Retry-After": "10"}) \
                from e
        try:
            chosen = find.pick(faces, face)
            hits = await self._blocking(find.find, self.dest, chosen.embedding, info["pack"], self.settings, top)
        except find.NoQueryFace as e:
            raise HTTPException(422, e.message) from None
        except find.NoPeopleOfModel as e:
            raise HTTPException(404, e.message) from None
        return find.answer(faces, face, find.floor_for(self.settings, info["pack"], len(chosen.embedding)), hits)

    @api.get("/v1/videos/{job_id}", response_model=JobStatus, dependencies=[Depends(bearer)])
    async def status(self, job_id: str):
        if not JOB_ID_RE.match(job_id):
            raise HTTPException(404, "no such job")
        job = await self._blocking(self.store.get, job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        if job.status == "queued":
            job.position = await self._blocking(self.store.position, job_id)
        return job


_model = FaceModel.bind()
app = VideoIngress.bind(VideoWorker.bind(_model), _model)
