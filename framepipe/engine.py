"""The single-video engine: source -> sampled frames -> faces -> people + representative frames -> outputs.

The steps are separate functions so that the Ray job (``jobs/``) and the HTTP service (``serve/``) run the
same code in their own places:

* :func:`plan`        resolve the source, probe the video, choose the sample times;
* :class:`VideoAccumulator`  takes each decoded frame and its faces (:meth:`FaceModel.analyze`);
* :meth:`VideoAccumulator.finish`  clusters the faces into people and picks the frames;
* :func:`write_outputs`  writes JPEGs, the Parquet manifest and ``result.json``.

:func:`extract` runs them all in one process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from framepipe import clustering, schema, selection, sources
from framepipe.config import Settings
from framepipe.errors import FramepipeError, NoFacesFound, NoFrames
from framepipe.faces import Face, FaceModel, load_face_model
from framepipe.prefetch import prefetch
from framepipe.storage import Destination
from framepipe.video import Frame, VideoInfo, VideoStream, open_video, sample_times

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (frames done, frames planned)


def video_id_for(source: sources.Source) -> str:
    """A stable, readable id: the file's name plus a hash of where it lives."""
    where = source.uri if "://" not in source.source else source.source
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[:60].strip("._") or "video"
    return f"{slug}-{hashlib.sha1(where.encode()).hexdigest()[:8]}"


def split_times(times: list[float], parts: int, min_per_chunk: int) -> list[list[float]]:
    """Cut sorted sample times into at most ``parts`` contiguous chunks of at least ``min_per_chunk``."""
    parts = max(1, min(parts, len(times) // max(min_per_chunk, 1)))
    size = -(-len(times) // parts)
    return [times[i : i + size] for i in range(0, len(times), size)] or [times]


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def face_crop(image: np.ndarray, bbox: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """The face's bbox grown by ``margin`` on each side, clipped to the frame."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    x1, y1 = int(max(0, x1 - mx)), int(max(0, y1 - my))
    x2, y2 = int(min(w, x2 + mx)), int(min(h, y2 + my))
    return image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


# --------------------------------------------------------------------------------------------------
# accumulating a video's frames
# --------------------------------------------------------------------------------------------------


@dataclass
class FaceRecord:
    pts_s: float
    face: Face


@dataclass
class Person:
    person_id: int
    best: FaceRecord
    appearances: int
    first_seen_s: float
    last_seen_s: float
    mean_embedding: np.ndarray
    seen_s: list[float] = field(default_factory=list)


@dataclass
class VideoReduction:
    people: list[Person]
    representatives: selection.Representatives
    frames: dict[float, bytes]  # JPEG of each frame an output needs, by pts
    frames_sampled: int
    faces_detected: int


@dataclass
class VideoAccumulator:
    """Collects what the engine needs from each analysed frame, keeping only small data plus the JPEGs of
    frames that hold faces or may become representative frames."""

    info: VideoInfo
    settings: Settings
    records: list[FaceRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    face_frames: dict[float, bytes] = field(default_factory=dict)
    frames_sampled: int = 0

    def __post_init__(self):
        s = self.settings
        self.picker = selection.RepresentativePicker(
            self.info.start_s,
            self.info.duration_s,
            count=s.representative_count,
            black_luma=s.black_luma,
            blur_min=s.blur_min,
            duplicate_max_distance=s.duplicate_max_distance,
        )

    def add(self, frame: Frame, faces: list[Face], stats: tuple[float, float, int] | None = None) -> None:
        """Take one analysed frame (``stats``: :func:`selection.measure` of it, if already computed)."""
        stats = stats or selection.measure(frame.image)
        self.add_encoded(frame.pts_s, faces, stats, lambda: encode_jpeg(frame.image, self.settings.jpeg_quality))

    def add_encoded(
        self, pts_s: float, faces: list[Face], stats: tuple[float, float, int], jpeg: bytes | Callable[[], bytes]
    ) -> None:
        """Take one analysed frame as its JPEG (or a function making it, called only if the frame is kept)."""
        self.frames_sampled += 1
        encoded = jpeg if isinstance(jpeg, bytes) else None

        def get() -> bytes:
            nonlocal encoded
            if encoded is None:
                encoded = jpeg()
            return encoded

        if faces:
            self.face_frames[pts_s] = get()
            self.records.extend(FaceRecord(pts_s, f) for f in faces)
        if self.picker.wants(pts_s, stats):
            self.picker.offer(selection.FrameStats(pts_s, *stats, jpeg=get()))

    def finish(self) -> VideoReduction:
        if self.frames_sampled == 0:
            raise NoFrames("no frame of the video could be decoded")
        s = self.settings
        people: list[Person] = []
        self.records.sort(key=lambda r: r.pts_s)  # frames may arrive out of order (parallel decoding)
        if self.records:
            emb = np.stack([r.face.embedding for r in self.records])
            qual = np.array([r.face.quality for r in self.records])
            labels = clustering.cluster_faces(emb, qual, s.cluster_eps, s.cluster_min_samples, s.singleton_min_quality)
            for pid in range(int(labels.max()) + 1 if len(labels) else 0):
                members = [r for r, lab in zip(self.records, labels) if lab == pid]
                best = max(members, key=lambda r: r.face.quality)
                mean = np.mean([r.face.embedding for r in members], axis=0)
                people.append(
                    Person(
                        person_id=pid,
                        best=best,
                        appearances=len({r.pts_s for r in members}),
                        first_seen_s=min(r.pts_s for r in members),
                        last_seen_s=max(r.pts_s for r in members),
                        mean_embedding=(mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32),
                        seen_s=sorted({r.pts_s for r in members}),
                    )
                )
        reps = self.picker.pick()
        frames = {p.best.pts_s: self.face_frames[p.best.pts_s] for p in people}
        frames.update({f.pts_s: f.jpeg for f in reps.frames})
        return VideoReduction(people, reps, frames, self.frames_sampled, len(self.records))


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


def write_outputs(
    dest: Destination,
    video_id: str,
    result: schema.Result,
    reduction: VideoReduction | None,
    embedding_model: str | None,
    jpeg_quality: int,
    finalize: Callable[[schema.Result], schema.Result] | None = None,
    manifest: str | None = schema.MANIFESTS,
) -> schema.Result:
    """Write the JPEGs, ``people.parquet``, ``video.parquet`` and, last, ``result.json``. Fills the URLs.

    ``finalize`` runs after the frames are written and before the two documents (to record the final
    processing time, say). ``manifest``: a folder under ``dest`` that also gets the two Parquet files, as
    ``<manifest>/people/<video_id>.parquet`` and ``<manifest>/videos/<video_id>.parquet`` (the destination's
    datasets, read by :mod:`framepipe.manifests`; None for none)."""
    out = dest.child(video_id)
    person_rows = []
    if reduction is not None:
        talent, reps = [], []
        for p in reduction.people:
            jpeg = reduction.frames[p.best.pts_s]
            url = out.write(f"talent/person_{p.person_id:03d}.jpg", jpeg)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            crop = encode_jpeg(face_crop(image, p.best.face.bbox), jpeg_quality)
            face_url = out.write(f"talent/person_{p.person_id:03d}_face.jpg", crop)
            t = schema.TalentFrame(
                person_id=p.person_id,
                url=url,
                face_url=face_url,
                timestamp_s=round(p.best.pts_s, 3),
                bbox=[round(float(v), 1) for v in p.best.face.bbox],
                quality=round(p.best.face.quality, 4),
                appearances=p.appearances,
                first_seen_s=round(p.first_seen_s, 3),
                last_seen_s=round(p.last_seen_s, 3),
                seen_s=[round(t, 3) for t in p.seen_s],
            )
            talent.append(t)
            person_rows.append(
                {
                    **t.model_dump(exclude={"url"}),
                    "video_id": video_id,
                    "source": result.video.source,
                    "frame_url": url,
                    "det_score": p.best.face.det_score,
                    "embedding": p.mean_embedding.tolist(),
                    "embedding_model": embedding_model,
                    "schema_version": schema.SCHEMA_VERSION,
                }
            )
        for i, f in enumerate(reduction.representatives.frames):
            url = out.write(f"representative/frame_{i:02d}.jpg", f.jpeg)
            reps.append(schema.RepresentativeFrame(url=url, timestamp_s=round(f.pts_s, 3)))
        result = result.model_copy(update={"talent_frames": talent, "representative_frames": reps})
    people = schema.parquet_bytes(schema.people_table(person_rows))
    out.write("people.parquet", people)
    if finalize:
        result = finalize(result)
    now = dt.datetime.now(dt.timezone.utc)
    result_url = out.url("result.json")
    video = schema.parquet_bytes(schema.videos_table([schema.video_row(result, result_url, now)]))
    out.write("video.parquet", video)
    if manifest:
        dest.write(f"{manifest}/people/{video_id}.parquet", people)
        dest.write(f"{manifest}/videos/{video_id}.parquet", video)
    out.write("result.json", result.model_dump_json(indent=2).encode())
    return result


# --------------------------------------------------------------------------------------------------
# one video, start to end
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    source: sources.Source
    video_id: str
    stream: VideoStream
    times: list[float]


def plan(source: str, settings: Settings) -> Plan:
    src = sources.resolve(source, timeout_s=settings.http_timeout_s, max_bytes=settings.max_bytes)
    stream = open_video(
        src.uri,
        backend=settings.backend,
        timeout_s=settings.http_timeout_s,
        max_pixels=settings.max_pixels,
        max_duration_s=settings.max_duration_s,
        decode_threads=settings.decode_threads,
    )
    times = sample_times(stream.info, settings.sample_fps, settings.min_samples)
    return Plan(src, video_id_for(src), stream, times)


def video_meta(source: str, p: Plan | None) -> schema.VideoMeta:
    if p is None:
        return schema.VideoMeta(source=source)
    i = p.stream.info
    if i.media_type == "image":
        return schema.VideoMeta(
            source=source, media_type="image", width=i.width, height=i.height, total_frames=1, codec=i.codec,
            size_bytes=p.source.size_bytes,
        )
    return schema.VideoMeta(
        source=source,
        width=i.width,
        height=i.height,
        fps=round(i.fps, 3),
        total_frames=i.total_frames,
        duration_s=round(i.duration_s, 3),
        codec=i.codec,
        start_s=round(i.start_s, 3),
        size_bytes=p.source.size_bytes,
    )


def fallback_video_id(source: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", source.rstrip("/").rsplit("/", 1)[-1])[:60].strip("._") or "video"
    return f"{name}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"


def extract(
    source: str,
    dest: str,
    settings: Settings | None = None,
    progress: Progress | None = None,
    model: FaceModel | None = None,
    raise_errors: bool = False,
) -> schema.Result:
    """Process one video and write its outputs under ``dest/<video_id>/``.

    Bad input never raises (unless ``raise_errors``): the result has ``status: failed`` and ``error``, and
    ``result.json`` plus the one-row ``video.parquet`` are written for it too.
    """
    settings = settings or Settings()
    t0 = time.perf_counter()
    destination = Destination(dest, timeout_s=settings.http_timeout_s)
    p: Plan | None = None
    device, backend = "cpu", None
    model_name = None
    try:
        model = model or load_face_model(settings)
        device, model_name = model.device, model.pack
        p = plan(source, settings)
        backend = p.stream.backend
        acc = VideoAccumulator(p.stream.info, settings)
        keyframes = settings.sampling == "keyframes"
        # Decoding (and measuring each frame) runs in other threads while this one runs the models; long
        # videos are cut into contiguous parts decoded in parallel, each by its own reader.
        streams = [p.stream]
        try:
            chunks = split_times(p.times, settings.decode_workers, min_per_chunk=30)
            streams += [p.stream.fork() for _ in chunks[1:]]
            decoded = [
                ((f, selection.measure(f.image)) for f in stream.read(chunk, keyframes=keyframes))
                for stream, chunk in zip(streams, chunks)
            ]
            with prefetch(*decoded, depth=settings.prefetch_frames) as frames:
                for frame, stats in frames:
                    acc.add(frame, model.analyze(frame.image), stats)
                    if progress:
                        progress(acc.frames_sampled, len(p.times))
            for stream in streams:
                acc.warnings += stream.warnings
        finally:
            for stream in streams:
                stream.close()
        meta = video_meta(source, p)

        def processing() -> schema.Processing:
            elapsed = time.perf_counter() - t0
            return processing_doc(settings, elapsed, device, backend, model_name, acc.frames_sampled, len(acc.records))

        return finish_video(destination, p.video_id, meta, acc, processing, model_name)
    except FramepipeError as e:
        if raise_errors:
            raise
        video_id = p.video_id if p else fallback_video_id(source)
        failed = processing_doc(settings, time.perf_counter() - t0, device, backend, model_name, 0, 0)
        return record_failure(destination, video_id, video_meta(source, p), e, failed, model_name, settings)


def finish_video(
    destination: Destination,
    video_id: str,
    meta: schema.VideoMeta,
    acc: VideoAccumulator,
    processing: Callable[[], schema.Processing],
    model_name: str | None,
    manifest: str | None = schema.MANIFESTS,
) -> schema.Result:
    """Cluster, pick the frames and write every output of a video whose frames are all in ``acc``.
    ``processing()`` gives the processing figures; it is called again just before the documents are written.
    ``manifest``: as in :func:`write_outputs`."""
    settings = acc.settings
    reduction = acc.finish()
    warnings = list(acc.warnings)
    if not reduction.people:
        warnings.append("no faces found" if not reduction.faces_detected else "no face good enough for a person")
    if reduction.representatives.short_video and meta.media_type == "video":
        warnings.append(f"short video: {len(reduction.representatives.frames)} representative frames")
    if settings.require_faces and not reduction.people:
        raise NoFacesFound("no person found in the video")
    result = schema.Result(
        video_id=video_id,
        status="succeeded",
        video=meta,
        processing=processing(),
        short_video=reduction.representatives.short_video,
        relaxed_rules=reduction.representatives.relaxed,
        warnings=warnings,
    )
    return write_outputs(
        destination,
        video_id,
        result,
        reduction,
        model_name,
        settings.jpeg_quality,
        finalize=lambda r: r.model_copy(update={"processing": processing()}),  # includes writing the frames
        manifest=manifest,
    )


def record_failure(
    destination: Destination,
    video_id: str,
    meta: schema.VideoMeta,
    error: FramepipeError,
    processing: schema.Processing,
    model_name: str | None,
    settings: Settings,
    manifest: str | None = schema.MANIFESTS,
) -> schema.Result:
    """The failed result of a video, also written as its result.json and one-row video.parquet
    (``manifest``: as in :func:`write_outputs`)."""
    result = schema.Result(
        video_id=video_id, status="failed", video=meta, processing=processing, error=schema.ErrorInfo(**error.to_dict())
    )
    try:
        write_outputs(destination, video_id, result, None, model_name, settings.jpeg_quality, manifest=manifest)
    except FramepipeError as werr:
        log.error("could not record the failure of %s: %s", meta.source, werr.message)
    return result


def processing_doc(
    settings: Settings, elapsed_s: float, device: str, backend: str | None, models: str | None, frames: int, faces: int
) -> schema.Processing:
    """Processing figures; the cost is the elapsed time at the device's hourly price."""
    price = settings.hourly_price(device)
    return schema.Processing(
        duration_s=round(elapsed_s, 3),
        estimated_cost_usd=round(elapsed_s / 3600.0 * price, 6),
        hourly_price_usd=price,
        device=device,
        backend=backend,
        models=models,
        frames_sampled=frames,
        faces_detected=faces,
        sampling=settings.sampling,
    )


def result_json(result: schema.Result) -> str:
    return json.dumps(result.model_dump(mode="json"), indent=2)
