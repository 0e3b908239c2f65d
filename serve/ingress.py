"""``VideoIngress``: the HTTP API (FastAPI), authentication before any body is read, validation, back-pressure,
idempotency, search by photo, and the sweeper that takes back the jobs of dead workers."""

import asyncio
import functools
import hmac
import logging
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayError
from ray.serve.task_consumer import instantiate_adapter_from_config

from framepipe import sources
from framepipe.people import search as find
from framepipe.config import Settings
from framepipe.errors import FramepipeError, InputTooLarge, ModelUnavailable, SourceNotFound, WorkerLost
from framepipe.storage import Destination
from serve import lifecycle, stores, webhook
from serve.lifecycle import QUEUE, JobStatus, deliver_webhook, job_settings, record_failure

from serve.model import HandleAnalyzer
from serve.settings import (IMAGE_TYPES, Accepted, SearchRequest, VideoRequest, decode_image, serve_settings)

log = logging.getLogger("framepipe.serve")

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")


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
        self.store = stores.open_store(QUEUE)
        self.broker = instantiate_adapter_from_config(lifecycle.tasks())
        self.pool = ThreadPoolExecutor(8, thread_name_prefix="ingress")  # its own: never starved by other work
        self.search_slots = asyncio.Semaphore(self.cfg.search_concurrency)
        threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True).start()

    def _sweep_forever(self) -> None:
        """Jobs whose worker died (their lease lapsed) go back on the broker, or fail ``worker_lost`` with their
        webhook once they have lost ``max_attempts`` workers. Also what a restart of ``serve run`` finds running, and
        (the embedded broker) queued jobs whose message a killed worker had read
        (:func:`lifecycle.requeue_forgotten`)."""
        suspects: set[str] = set()
        while True:
            time.sleep(QUEUE.sweep_s)
            try:
                lifecycle.sweep(self.store, QUEUE.max_attempts, self._enqueue, self._lost)
                if not QUEUE.broker_url:  # the embedded broker: jobs read by a worker killed before its claim
                    suspects = lifecycle.requeue_forgotten(self.store, lifecycle.embedded_holds(QUEUE), self._enqueue,
                                                           suspects)
            except Exception:
                log.exception("sweeping lapsed leases")

    def _enqueue(self, job_id: str) -> None:
        self.broker.enqueue_task_sync(lifecycle.TASK, args=[job_id], task_id=uuid.uuid4().hex)

    def _lost(self, job: JobStatus) -> None:
        settings = job_settings(self.settings, job)
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
            await self._blocking(self.broker.enqueue_task_sync, lifecycle.TASK, args=[job.job_id], task_id=job.job_id)
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
