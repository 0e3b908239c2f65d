"""The backfill's stages, each run by Ray on some worker: the split layout's decode task, face actor and
finish task, and the fused layout's video actor (``jobs/backfill.py`` says how they fit together)."""

from __future__ import annotations

import logging
import math
import pickle
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from framepipe import ids, outputs, pipeline, schema, selection, state, tracking
from framepipe.config import Settings
from framepipe.errors import ErrorCode, FramepipeError
from framepipe.storage import Destination
from framepipe.videorun import VideoRun, result_row, typed_error

from jobs import faults

log = logging.getLogger("framepipe.backfill")

# frames per yield of a decode task, all of one lane: a face actor's call takes whole blocks (made of whole yields),
# so that the faces a track reuses embeddings for are those the CLI would (tracking.SEGMENT)
FRAMES_PER_BATCH = tracking.SEGMENT


@dataclass(frozen=True)
class StageContext:
    """What every stage of one run is given, in one picklable object (the settings as JSON): each stage builds its
    settings and destination from it."""

    settings_json: str
    dest: str
    force: bool = False  # process videos already done
    run_id: str = ""  # written into the done markers this run makes
    attempts: object = None  # the run's jobs.faults.Attempts actor: what was retried, what was lost

    @classmethod
    def of(cls, settings: Settings, dest: str, force: bool = False, run_id: str = "",
           attempts: object = None) -> "StageContext":
        return cls(settings.model_dump_json(), dest, force, run_id, attempts)

    def settings(self) -> Settings:
        return Settings.model_validate_json(self.settings_json)

    def destination(self, settings: Settings | None = None) -> Destination:
        return Destination(self.dest, timeout_s=(settings or self.settings()).http_timeout_s)

    def with_settings(self, settings: Settings) -> "StageContext":
        """The same run with other settings (the model actors' threads and device)."""
        return StageContext.of(settings, self.dest, self.force, self.run_id, self.attempts)


# --------------------------------------------------------------------------------------------------
# decode: a task per video
# --------------------------------------------------------------------------------------------------


@dataclass
class VideoSummary:
    """What a decode task knows of its video, sent once (in the video's last row)."""

    video_id: str
    source: str
    identity: str  # the object's identity, for its done marker
    started: float  # wall clock (time.time) when the decode task took the video: the VideoRun's start
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


def decode_video(batch: dict, ctx: StageContext) -> Iterator[dict]:
    settings = ctx.settings()
    destination = ctx.destination(settings)
    for source, identity in zip(batch["source"], batch["identity"]):
        run = VideoRun(str(source), destination, settings, str(identity), ctx.run_id)
        attempt = faults.started(ctx.attempts, "decode", run.video_id, run.video_id)
        yield from _decode_one(run, ctx.force, attempt)
        faults.ended(ctx.attempts, "decode", run.video_id)


def _decode_one(run: VideoRun, force: bool, attempt: int = 1):
    from framepipe.framesource import open_source

    source, settings, vid = run.source, run.settings, run.video_id
    summary = VideoSummary(vid, source, run.identity, run.started, node=_node_id())
    fs = None
    try:
        if not force and run.is_done():
            summary.skipped = True
        elif attempt > faults.MOST_ATTEMPTS:
            summary.error = {"type": ErrorCode.WORKER_LOST, "message": faults.worker_lost(attempt)}
        else:
            fs = open_source(source, settings)
            run.opened(fs)
            summary.meta, summary.backend = run.meta, run.backend
            picks = state.FramePicks(fs.info, settings)
            photo = fs.info.media_type == "image"  # its frame is searched for close-ups too (FaceModel.detect)
            quality = settings.jpeg_quality
            lanes: dict[int, list] = {}  # a video's parts are read at once: each part's frames in time order
            with fs.frames() as frames:
                for f in frames:
                    picks.add(f.pts_s, f.measure, lambda img=f.image: outputs.encode_jpeg(img, quality))
                    rows = lanes.setdefault(f.lane, [])
                    rows.append(f)
                    if len(rows) == FRAMES_PER_BATCH:  # a lane's segment: one yield
                        yield _frame_rows(vid, rows, photo)
                        summary.frames += len(rows)
                        lanes[f.lane] = []
                        faults.failpoint("decode", vid)
            for rows in lanes.values():
                if rows:
                    yield _frame_rows(vid, rows, photo)
                    summary.frames += len(rows)
            summary.representatives = picks.pick() if picks.frames_sampled else None
            summary.warnings = list(fs.warnings)
    except Exception as e:  # one bad input is one failed row, never a failed dataset
        summary.error = typed_error(e, f"decoding {source}", source, settings.http_timeout_s).to_dict()
    finally:
        if fs is not None:
            fs.close()
    yield {
        "video_id": [vid],
        "pts": np.array([math.nan]),
        "image": np.zeros((1, 1, 1, 3), np.uint8),
        "photo": np.array([False]),
        "lane": np.array([-1]),
        "index": np.array([-1]),
        "colour": [b""],
        "last": np.array([True]),
        "summary": [pickle.dumps(summary)],
    }


def _frame_rows(vid: str, frames: list, photo: bool) -> dict:
    """Frames of one video."""
    return {
        "video_id": [vid] * len(frames),
        "pts": np.array([f.pts_s for f in frames]),
        "image": np.stack([f.image for f in frames]),  # one video: one shape; a tensor column
        "photo": np.full(len(frames), photo),
        "lane": np.array([f.lane for f in frames]),  # what tracking.Tracks follows faces by
        "index": np.array([f.index for f in frames]),
        "colour": [f.measure.colour for f in frames],
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

    def __init__(self, ctx: StageContext):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = ctx.settings()
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.node = _node_id()
        self.attempts = ctx.attempts
        faults.note_actor(self.attempts, "analysis")

    def __call__(self, batch: dict) -> dict:
        n = len(batch["video_id"])
        key = f"{batch['video_id'][0]}@{float(batch['pts'][0])}"  # a call's frames: the same on a re-run
        attempt = faults.started(self.attempts, "analysis", key, str(batch["video_id"][0]))
        if attempt <= faults.MOST_ATTEMPTS:
            faults.failpoint("analysis", str(batch["video_id"][0]))
        out = self._call(batch, n, attempt)
        faults.ended(self.attempts, "analysis", key)
        return out

    @staticmethod
    def _runs(batch: dict, todo: list[int]) -> list[tuple[list[int], bool]]:
        """(rows, photo): the photos (one-frame inputs) together; the consecutive frames of each lane of a video
        together."""
        runs: list[tuple[list[int], bool]] = []
        for i in todo:
            photo = bool(batch["photo"][i])
            last = runs[-1][0][-1] if runs else None
            follows = last is not None and batch["video_id"][last] == batch["video_id"][i] and \
                batch["lane"][last] == batch["lane"][i] and batch["index"][last] + 1 == batch["index"][i]
            if last is not None and runs[-1][1] == photo and (photo or follows):
                runs[-1][0].append(i)
            else:
                runs.append(([i], photo))
        return runs

    def _faces(self, batch: dict, rows: list[int], photo: bool) -> dict[int, list]:
        """Row -> its faces, in calls of the analyzer's batch size. Photos: searched for close-ups too, every face
        embedded; a video's frames: the same tracking as the CLI's (a call holds whole segments, tracking.SEGMENT,
        and a run of frames starts and ends its tracks: whichever actor runs it, the same faces are embedded)."""
        size, out = self.analyzer.batch_size, {}
        tracks = tracking.Tracks(self.settings.shot_cut_distance, self.settings.reuse_track_embeddings)
        for at in range(0, len(rows), size):
            chunk = rows[at:at + size]
            found = tracking.analyse_frames(self.analyzer, [batch["image"][i] for i in chunk],
                                            [batch["colour"][i] for i in chunk], tracks,
                                            [(int(batch["lane"][i]), int(batch["index"][i])) for i in chunk], photo)
            out.update(zip(chunk, found))
        tracking.conclude(self.analyzer, tracks)
        return out

    def _call(self, batch: dict, n: int, attempt: int = 1) -> dict:
        faces, jpegs, codes, messages = [b""] * n, [b""] * n, [""] * n, [""] * n
        todo = [i for i in range(n) if not batch["last"][i]]
        if attempt > faults.MOST_ATTEMPTS:  # these frames crash the models' worker: their videos fail, nothing else
            for i in todo:
                codes[i], messages[i] = ErrorCode.WORKER_LOST, faults.worker_lost(attempt)
            todo = []
        found: dict[int, list] = {}
        for rows, photo in self._runs(batch, todo):
            try:
                found.update(self._faces(batch, rows, photo))
            except Exception as e:  # costs the video (a transient failure, retried by the next run), not the job
                error = typed_error(e, "the face models")
                for i in rows:
                    codes[i], messages[i] = error.code, f"face models failed: {error.message}"
        for i, found_faces in found.items():
            faces[i] = pickle.dumps(found_faces)
            if found_faces:
                jpegs[i] = outputs.encode_jpeg(batch["image"][i], self.settings.jpeg_quality)
        return {
            "video_id": batch["video_id"],
            "pts": batch["pts"],
            "faces": faces,
            "jpeg": jpegs,
            "error_code": codes,  # "" when the frame was analysed
            "error_message": messages,
            "last": batch["last"],
            "summary": batch["summary"],
            "device": [self.analyzer.device] * n,
            "pack": [self.analyzer.pack] * n,
            "node": [self.node] * n,
        }


class VideoActor:
    """The fused layout (models on CPUs): a whole video per call, through ``pipeline.process_video`` as in ``framepipe
    extract`` (decoding in the actor's reader threads, the models in its own thread, outputs and done marker written
    here). Out goes one small row per video; frames never leave the process that decodes them."""

    def __init__(self, ctx: StageContext):
        from framepipe.analyzer import LocalAnalyzer

        self.settings = ctx.settings()
        self.destination = ctx.destination(self.settings)
        self.force, self.run_id = ctx.force, ctx.run_id
        self.analyzer = LocalAnalyzer.load(self.settings)
        self.node = _node_id()
        self.attempts = ctx.attempts
        faults.note_actor(self.attempts, "video")

    def __call__(self, batch: dict) -> dict:
        rows = [self._one(str(s), str(i)) for s, i in zip(batch["source"], batch["identity"])]
        return {k: [r[k] for r in rows] for k in FUSED_COLUMNS}

    def _one(self, source: str, identity: str) -> dict:
        row = {"video_id": ids.video_id(source), "source": source, "status": "skipped", "people": 0, "error": "",
               "started": time.time(), "node": self.node}
        attempt = faults.started(self.attempts, "video", row["video_id"], row["video_id"])
        try:
            if attempt > faults.MOST_ATTEMPTS:
                result = self._worker_lost(source, identity, attempt)
            else:
                faults.failpoint("analysis", row["video_id"])
                result = pipeline.process_unless_done(
                    source, identity, self.destination, self.settings, self.analyzer, self.force, self.run_id,
                    on_written=lambda: faults.failpoint("finish", row["video_id"]))
            if result is not None:
                row.update(result_row(result))
        except Exception as e:  # the destination failed under the failure record too: this video, not the dataset
            error = typed_error(e, f"processing {source}")
            row.update(status="failed", error=error.line)
        faults.ended(self.attempts, "video", row["video_id"])
        return {**row, "finished": time.time()}

    def _worker_lost(self, source: str, identity: str, attempt: int) -> schema.Result | None:
        """The failed record of a video whose earlier calls never ended (a poison pill), marked done; None when
        it is done already."""
        run = VideoRun(source, self.destination, self.settings, identity, self.run_id)
        if not self.force and run.is_done():
            return None
        result = run.fail(FramepipeError.with_code(ErrorCode.WORKER_LOST, faults.worker_lost(attempt)))
        run.mark_done(result)
        return result


FUSED_COLUMNS = ("video_id", "source", "status", "people", "error", "started", "finished", "node")


# --------------------------------------------------------------------------------------------------
# finish: a Ray task per complete video
# --------------------------------------------------------------------------------------------------


@dataclass
class AnalysedFrame:
    """One frame's row from the face actors, as the driver hands it to the finish task."""

    pts: float
    faces: bytes  # pickled list[Face]
    jpeg: bytes  # b"" when the frame holds no face
    error_code: str = ""  # the face models failed on this frame: the video fails with it
    error_message: str = ""


def finish_video(summary: VideoSummary, frames: list[AnalysedFrame], ctx: StageContext, device: str,
                 pack: str | None) -> dict:
    """People, outputs and done marker of one video whose frames have all been analysed: the end of the
    :class:`VideoRun` its decode task began."""
    settings = ctx.settings()
    run = VideoRun(summary.source, ctx.destination(settings), settings, summary.identity, ctx.run_id,
                   started=summary.started, device=device or "cpu", pack=pack or None, backend=summary.backend,
                   meta=summary.meta)

    def build() -> schema.Result:
        if summary.error:
            raise FramepipeError.with_code(summary.error["type"], summary.error["message"])
        failed = next((f for f in frames if f.error_code), None)
        if failed:
            raise FramepipeError.with_code(failed.error_code, failed.error_message)
        people = state.PeopleState()
        for f in sorted(frames, key=lambda f: f.pts):
            people.add(f.pts, pickle.loads(f.faces), f.jpeg)
        return run.succeed(state.reduce(people, summary.representatives, summary.frames, settings), summary.warnings)

    attempt = faults.started(ctx.attempts, "finish", summary.video_id, summary.video_id)
    if attempt > faults.MOST_ATTEMPTS:
        summary.error = {"type": ErrorCode.WORKER_LOST, "message": faults.worker_lost(attempt)}
    result = run.attempt(build)
    if attempt <= faults.MOST_ATTEMPTS:
        faults.failpoint("finish", summary.video_id)  # the outputs and manifest rows written, the done marker not yet
    run.mark_done(result)
    faults.ended(ctx.attempts, "finish", summary.video_id)
    return {**result_row(result), "started": summary.started, "finished": time.time()}
