"""Ray Serve application: one video per request over HTTP, results on a signed webhook.

Two deployments, split by resource profile:

* ``VideoIngress`` (FastAPI, CPU): validates requests, runs framepipe's per-video pipeline
  (``pipeline.process_video``: decoding in reader threads, clustering, output writing) in a worker thread with
  :class:`HandleAnalyzer` as its analyzer, keeps job status, posts the webhook;
* ``FaceModel`` (GPU where there is one): holds the models once and batches frames across all callers with
  ``@serve.batch``.

Run it with ``serve run serve/config.yaml`` (or ``serve deploy``); settings come from the environment
(``FRAMEPIPE_SERVE_*``, see :class:`ServeSettings`, and the engine's ``FRAMEPIPE_*``).
"""


import asyncio
import hmac
import logging
import re
import time
import uuid
from typing import Annotated, Literal
from urllib.parse import urlparse

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from ray import serve

from framepipe import ids, outputs, pipeline, schema, sources
from framepipe.config import Settings
from framepipe.errors import FramepipeError, InputTooLarge, SourceNotFound
from framepipe.faces import load_face_model
from framepipe.framesource import Cancel
from framepipe.storage import Destination
from serve import webhook

log = logging.getLogger("framepipe.serve")

BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # plus the rules in VideoRequest._one_source
JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class ServeSettings(BaseSettings):
    """The service's own settings (env ``FRAMEPIPE_SERVE_<NAME>``); the engine's come from ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_SERVE_", frozen=True)

    api_token: SecretStr = Field(description="Bearer token that every request must carry.")
    webhook_secret: SecretStr = Field(description="Shared secret of the webhook signatures.")
    webhook_allowed_hosts: str = Field("", description="Comma-separated hosts webhooks may go to (*.x.com ok).")
    source_allowed_hosts: str = Field("", description="Comma-separated hosts that `url` sources may name "
                                      "(empty: S3 sources only). Keeps the service from fetching arbitrary URLs.")
    output: str = Field(description="Where outputs go: s3://bucket/prefix or a local directory.")
    presign_seconds: int = Field(0, ge=0, description="> 0: results also carry presigned URLs valid this long.")
    job_timeout_s: float = Field(900.0, gt=0, description="A job running longer fails with a timeout.")
    webhook_max_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.webhook_allowed_hosts.split(",") if h.strip()]

    @property
    def source_hosts(self) -> list[str]:
        return [h.strip() for h in self.source_allowed_hosts.split(",") if h.strip()]


class RequestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_fps: float | None = Field(None, gt=0, le=5)
    sampling: Literal["exact", "keyframes"] | None = None
    require_faces: bool | None = None


class VideoRequest(BaseModel):
    """A video in S3 (``bucket`` + ``key``) or at an http(s) ``url``."""

    model_config = ConfigDict(extra="forbid")
    bucket: str | None = Field(None, min_length=3, max_length=63, pattern=BUCKET_RE)
    key: str | None = Field(None, min_length=1, max_length=1024)
    url: str | None = Field(None, max_length=4096, pattern=r"^https?://[^\s]+$")
    webhook_url: str | None = Field(None, max_length=2048)
    settings: RequestSettings | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bucket is None) != (self.key is None):
            raise ValueError("give both bucket and key")
        if (self.bucket is None) == (self.url is None):
            raise ValueError("give either bucket and key, or url")
        if self.bucket is not None and (
            ".." in self.bucket or self.bucket.startswith("xn--") or re.fullmatch(r"[0-9.]+", self.bucket)
        ):
            raise ValueError("bucket is not a valid S3 bucket name")
        for name in ("url", "webhook_url"):
            value = getattr(self, name)
            if value is not None:
                try:
                    urlparse(value).hostname
                except ValueError:
                    raise ValueError(f"{name} is not a valid URL") from None
        if self.key is not None:
            parts = self.key.split("/")
            if self.key.startswith("/") or ".." in parts or "." in parts or any(ord(c) < 32 for c in self.key):
                raise ValueError("key must be a plain object key (no leading '/', no '.' or '..' parts)")
        return self

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else str(self.url)


class Accepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    source: str
    submitted_at: float
    result: schema.Result | None = None
    webhook: dict | None = None


api = FastAPI(title="framepipe", version="1", description="Find the people in a video.")
bearer = HTTPBearer(auto_error=False)


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
    """The FaceModel deployment as the pipeline's analyzer. Called from the pipeline's worker thread: a batch of
    frames goes out as concurrent calls, which ``@serve.batch`` groups with other jobs' frames."""

    def __init__(self, handle, info: dict, batch_size: int):
        self.handle, self.device, self.pack, self.batch_size = handle, info["device"], info["pack"], batch_size

    def analyze(self, images):
        responses = [self.handle.analyze.remote(image) for image in images]
        return [r.result() for r in responses]


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class VideoIngress:
    def __init__(self, model):
        self.cfg = ServeSettings()
        self.settings = Settings()
        self.model = model
        self.dest = Destination(self.cfg.output, timeout_s=self.settings.http_timeout_s)
        self.jobs: dict[str, JobStatus] = {}
        self.tasks: set[asyncio.Task] = set()

    # ---- auth -------------------------------------------------------------------------------------

    def _check(self, creds: HTTPAuthorizationCredentials | None) -> None:
        token = self.cfg.api_token.get_secret_value()
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    # ---- endpoints --------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.post("/v1/videos", status_code=202, response_model=Accepted)
    async def submit(
        self,
        body: VideoRequest,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
    ):
        self._check(creds)
        if body.webhook_url and not webhook.host_allowed(body.webhook_url, self.cfg.allowed_hosts):
            raise HTTPException(422, "webhook_url host is not on the allow-list")
        if body.url and not webhook.host_allowed(body.url, self.cfg.source_hosts):
            raise HTTPException(422, "url host is not on the allow-list of sources")
        overrides = body.settings.model_dump() if body.settings else {}
        settings = self.settings.with_overrides(**overrides)
        try:  # fail fast on what a HEAD can tell: missing object, too large
            await asyncio.to_thread(sources.resolve, body.source, settings.http_timeout_s, settings.max_bytes)
        except SourceNotFound as e:
            raise HTTPException(404, e.message) from None
        except InputTooLarge as e:
            raise HTTPException(413, e.message) from None
        except FramepipeError as e:
            raise HTTPException(422, f"{e.code}: {e.message}") from None
        job_id = uuid.uuid4().hex
        job = JobStatus(job_id=job_id, status="queued", source=body.source, submitted_at=time.time())
        await self._save(job)
        task = asyncio.create_task(self._run(job, settings, body.webhook_url))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return Accepted(job_id=job_id, status="queued", status_url=f"/v1/videos/{job_id}")

    @api.get("/v1/videos/{job_id}", response_model=JobStatus)
    async def status(
        self, job_id: str, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None
    ):
        self._check(creds)
        if not JOB_ID_RE.match(job_id):
            raise HTTPException(404, "no such job")
        job = self.jobs.get(job_id)
        if job is None:
            try:
                raw = await asyncio.to_thread(self.dest.read, f"jobs/{job_id}.json")
            except Exception:
                raise HTTPException(404, "no such job") from None
            job = JobStatus.model_validate_json(raw)
        return job

    # ---- the work ---------------------------------------------------------------------------------

    async def _save(self, job: JobStatus) -> None:
        self.jobs[job.job_id] = job
        await asyncio.to_thread(self.dest.write, f"jobs/{job.job_id}.json", job.model_dump_json().encode())

    async def _run(self, job: JobStatus, settings: Settings, webhook_url: str | None) -> None:
        job.status = "running"
        await self._save(job)
        try:
            result = await self._process(job.source, settings)
        except Exception as e:  # a bug costs this job, never the service
            log.exception("job %s failed", job.job_id)
            result = await self._failed(job.source, settings, "internal_error", type(e).__name__)
        job.result = self._presigned(result)
        job.status = result.status
        await self._save(job)
        if webhook_url:
            payload = {**job.result.model_dump(mode="json"), "job_id": job.job_id, "status": job.status}
            delivery = await asyncio.to_thread(
                webhook.deliver, webhook_url, payload, self.cfg.webhook_secret.get_secret_value(), job.job_id,
                self.cfg.webhook_max_attempts, self.cfg.webhook_backoff_s, self.cfg.webhook_timeout_s,
            )
            job.webhook = {"delivered": delivery.delivered, "attempts": delivery.attempts, "status": delivery.status,
                           "error": delivery.error}
            await self._save(job)

    async def _process(self, source: str, settings: Settings) -> schema.Result:
        """framepipe's per-video pipeline in a worker thread. On timeout the pipeline is told to stop (it checks
        between frames and closes its decoders in their own threads) and its own failed record is awaited: one
        result per job, never a late success after the failure."""
        analyzer = HandleAnalyzer(self.model, await self.model.info.remote(), settings.analyze_batch)
        cancel = Cancel()
        work = asyncio.ensure_future(
            asyncio.to_thread(pipeline.process_video, source, self.dest, settings, analyzer, None, cancel)
        )
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.cfg.job_timeout_s)
        except asyncio.TimeoutError:
            cancel.stop("timeout", f"over {self.cfg.job_timeout_s:.0f} s")
            return await work

    async def _failed(self, source, settings, code, message) -> schema.Result:
        err = FramepipeError.with_code(code, message)
        failed = outputs.processing_doc(settings, 0.0, "cpu", None, None, 0, 0)
        return await asyncio.to_thread(outputs.record_failure, self.dest, ids.video_id(source),
                                       outputs.video_meta(source, None), err, failed, None, settings)

    def _presigned(self, result: schema.Result) -> schema.Result:
        if not (self.cfg.presign_seconds and self.dest.is_s3):
            return result
        sign = lambda url: self.dest.presign(url, self.cfg.presign_seconds)  # noqa: E731
        talent = [t.model_copy(update={"signed_url": sign(t.url), "signed_face_url": sign(t.face_url)})
                  for t in result.talent_frames]
        reps = [r.model_copy(update={"signed_url": sign(r.url)}) for r in result.representative_frames]
        return result.model_copy(update={"talent_frames": talent, "representative_frames": reps})


app = VideoIngress.bind(FaceModel.bind())
