"""The backfill's stages, each run by Ray on some worker: listing, the split layout's decode task, face actor and
finish task, and the fused layout's video actor (``jobs/backfill.py`` says how they fit together)."""

from __future__ import annotations

import logging
import math
import pickle
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from framepipe import ids, outputs, pipeline, schema, selection, sources, state
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.storage import Destination

log = logging.getLogger("framepipe.backfill")

FRAMES_PER_BATCH = 8  # frames per yield of a decode task
LIST_PAGE = 1000  # inputs per listing page
# Environment variables handed to the workers: settings only. Credentials never travel in the runtime env (it is
# readable in the job table, the dashboard and Ray's logs): nodes use their instance role, profile or own env.
def list_inputs(batch: dict, root: str, images: bool, timeout_s: float) -> Iterator[dict]:
    page: list[sources.Source] = []
    for src in sources.iter_videos(root, timeout_s=timeout_s, images=images):
        page.append(src)
        if len(page) == LIST_PAGE:
            yield _page(page)
            page = []
    if page:
        yield _page(page)


def _page(srcs: list[sources.Source]) -> dict:
    return {"source": [s.source for s in srcs], "identity": [s.identity for s in srcs]}


# --------------------------------------------------------------------------------------------------
# decode: a task per video
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSummary:
    """What a decode task knows of its video, sent once (in the video's last row)."""

    video_id: str
    source: str
    marker: str
    started: float  # wall clock (time.time) when the decode task took the video
    skipped: bool = False
    meta: schema.VideoMeta | None = None
    backend: str | None = None
    frames: int = 0  # frame rows sent before this one
    representatives: selection.Representatives | None = None
    warnings: list[str] = field(default_factory=list)
    error: dict | None = None  # {"type", "message"}
    node: str = ""


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def decode_video(batch: dict, settings_json: str, dest: str, force: bool) -> Iterator[dict]:
    settings = Settings.model_validate_json(settings_json)
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    for source, identity in zip(batch["source"], batch["identity"]):
        yield from _decode_one(str(source), str(identity), settings, destination, force)


def _decode_one(source: str, identity: str, settings: Settings, destination: Destination, force: bool):
    from framepipe.framesource import open_source

    vid = ids.video_id(source)
    summary = VideoSummary(vid, source, ids.done_marker(vid, identity, settings), time.time(), node=_node_id())
    fs = None
    try:
        if not force and pipeline.is_done(destination, summary.marker):
            summary.skipped = True
        else:
            fs = open_source(source, settings)
            summary.meta, summary.backend = outputs.video_meta(source, fs), fs.backend
            picks = state.FramePicks(fs.info, settings)
            quality = settings.jpeg_quality
            rows: list = []
            with fs.frames() as frames:
                for f in frames:
                    picks.add(f.pts_s, f.measure, lambda img=f.image: outputs.encode_jpeg(img, quality))
                    rows.append(f)
                    if len(rows) == FRAMES_PER_BATCH:
                        yield _frame_rows(vid, rows)
                        summary.frames += len(rows)
                        rows = []
            if rows:
                yield _frame_rows(vid, rows)
                summary.frames += len(rows)
            summary.representatives = picks.pick() if picks.frames_sampled else None
            summary.warnings = list(fs.warnings)
    except Exception as e:  # one bad input is one failed row, never a failed dataset
        summary.error = pipeline.typed_error(e, f"decoding {source}", source, settings.http_timeout_s).to_dict()
    finally:
        if fs is not None:
            fs.close()
    yield {
        "video_id": [vid],
        "pts": np.array([math.nan]),
        "image": np.zeros((1, 1, 1, 3), np.uint8),
        "last": np.array([True]),
        "summary": [pickle.dumps(summary)],
    }


def _frame_rows(vid: str, frames: list) -> dict:
    return {
        "video_id": [vid] * len(frames),
        "pts": np.array([f.pts_s for f in frames]),
        "image": np.stack([f.image for f in frames]),  # one video: one shape; a tensor column
        # typed columns: an all-None column would come back as float NaNs from a block that holds no summary
        "last": np.zeros(len(frames), dtype=bool),
        "summary": [b""] * len(frames),
    }


# --------------------------------------------------------------------------------------------------
# faces: an actor pool
# --------------------------------------------------------------------------------------------------


class FaceActor:
    """The models, once per actor (framepipe's LocalAnalyzer). Pixels stop here: out go the faces, and the JPEG of
    frames that hold one."""

    def __init__(self, settings_json: str):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = Settings.model_validate_json(settings_json)
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.tag = f"{self.analyzer.device}|{self.analyzer.pack}|{_node_id()}"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["video_id"])
        faces, jpegs, errors = [b""] * n, [b""] * n, [""] * n
        todo = [i for i in range(n) if not batch["last"][i]]
        size = self.analyzer.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            try:
                found = self.analyzer.analyze([batch["image"][i] for i in chunk])
            except Exception as e:  # costs the video (a transient failure, retried by the next run), not the job
                log.exception("face models failed")
                for i in chunk:
                    errors[i] = f"{type(e).__name__}: {str(e)[:200]}"
                continue
            for i, found_faces in zip(chunk, found):
                faces[i] = pickle.dumps(found_faces)
                if found_faces:
                    jpegs[i] = outputs.encode_jpeg(batch["image"][i], self.settings.jpeg_quality)
        return {
            "video_id": batch["video_id"],
            "pts": batch["pts"],
            "faces": faces,
            "jpeg": jpegs,
            "error": errors,
            "last": batch["last"],
            "summary": batch["summary"],
            "analyzer": [self.tag] * n,
        }


class VideoActor:
    """The fused layout (models on CPUs): a whole video per call, through ``pipeline.process_video`` as in ``framepipe
    extract`` (decoding in the actor's reader threads, the models in its own thread, outputs and done marker written
    here). Out goes one small row per video; frames never leave the process that decodes them."""

    def __init__(self, settings_json: str, dest: str, force: bool, run: str):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = Settings.model_validate_json(settings_json)
        self.destination = Destination(dest, timeout_s=self.settings.http_timeout_s)
        self.force = force
        self.run = run  # this run's id, written into the done markers it makes
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.node = _node_id()

    def __call__(self, batch: dict) -> dict:
        rows = [self._one(str(s), str(i)) for s, i in zip(batch["source"], batch["identity"])]
        return {k: [r[k] for r in rows] for k in FUSED_COLUMNS}

    def _one(self, source: str, identity: str) -> dict:
        row = {"video_id": ids.video_id(source), "source": source, "status": "skipped", "people": 0, "error": "",
               "started": time.time(), "node": self.node}
        try:
            result = pipeline.process_unless_done(source, identity, self.destination, self.settings, self.analyzer,
                                                  self.force, self.run)
            if result is not None:
                row.update(status=result.status, people=len(result.talent_frames),
                           error=str(result.error) if result.error else "")
        except Exception as e:  # the destination failed under the failure record too: this video, not the dataset
            error = pipeline.typed_error(e, f"processing {source}")
            row.update(status="failed", error=error.line)
        return {**row, "finished": time.time()}


FUSED_COLUMNS = ("video_id", "source", "status", "people", "error", "started", "finished", "node")


# --------------------------------------------------------------------------------------------------
# finish: a Ray task per complete video
# --------------------------------------------------------------------------------------------------


def finish_video(summary: VideoSummary, frames: list, settings_json: str, dest: str, analyzer: str) -> dict:
    """People, outputs and done marker of one video whose frames have all been analysed (``frames``: (pts, pickled
    faces, JPEG, error) per frame)."""
    settings = Settings.model_validate_json(settings_json)
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    device, pack = (analyzer.split("|") + ["cpu", ""])[:2] if analyzer else ("cpu", None)
    people = state.PeopleState()

    def build() -> schema.Result:
        if summary.error:
            raise FramepipeError.with_code(summary.error["type"], summary.error["message"])
        failed = next((e for _, _, _, e in frames if e), None)
        if failed:
            raise FramepipeError.with_code(ErrorCode.INTERNAL_ERROR, f"face models failed: {failed}")
        for pts, faces, jpeg, _ in sorted(frames, key=lambda f: f[0]):
            people.add(pts, pickle.loads(faces), jpeg)
        reduction = state.reduce(people, summary.representatives, summary.frames, settings)

        def processing() -> schema.Processing:
            return outputs.processing_doc(settings, time.time() - summary.started, device, summary.backend, pack,
                                          summary.frames, len(people.records))

        return outputs.write_success(destination, summary.video_id, summary.meta, reduction, summary.warnings,
                                     settings, processing, pack)

    def processing_failed() -> schema.Processing:
        return outputs.processing_doc(settings, time.time() - summary.started, device, summary.backend, pack, 0, 0)

    meta = summary.meta or schema.VideoMeta(source=summary.source)
    result = pipeline.run_or_record(summary.source, build, destination, summary.video_id, lambda: meta,
                                    processing_failed, pack, settings)
    if pipeline.is_final(result):
        pipeline.mark_done(destination, summary.marker)
    return {
        "video_id": summary.video_id,
        "source": summary.source,
        "status": result.status,
        "people": len(result.talent_frames),
        "error": str(result.error) if result.error else "",
        "started": summary.started,
        "finished": time.time(),
    }
