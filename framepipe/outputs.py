"""Writing a video's outputs: the JPEGs, the per-video Parquet files, ``result.json``, then the destination's
manifest rows.

Crash consistency: ``result.json`` is written after everything in the video's folder, and the manifest rows
(appended to the ``manifests/people`` then the ``manifests/videos`` Delta tables, :mod:`framepipe.tables`, what
``framepipe people`` and notebooks read) after ``result.json``, so a video appears in the destination's datasets
only once it is done; a run killed before that leaves the previous state of those datasets (people rows without
their video row are no video's current rows). ``*.part`` files a killed run left in the video's folder are removed
before writing (never those of a live writer of the same video: a temporary name says which process writes it). A
full disk: room for the failure record is reserved before the frames are written (``RESERVE_BYTES`` in a
``.reserve`` file of this writer's own) and given back when writing fails, with the half-written file, so the
failure record fits.

The one output writer of every front door (``framepipe extract``, the Ray backfill, the Serve consumer):

* :func:`write_success` writes a finished video (its :class:`~framepipe.state.VideoReduction`);
* :func:`record_failure` writes the failed ``result.json`` and one-row ``video.parquet`` of a bad input;
* :func:`video_meta` and :func:`processing_doc` fill the documents' metadata and processing figures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from framepipe import schema, storage, tables
from framepipe.config import Settings
from framepipe.errors import FramepipeError, NoFacesFound
from framepipe.state import VideoReduction
from framepipe.storage import Destination

if TYPE_CHECKING:
    from framepipe.framesource import FrameSource

log = logging.getLogger(__name__)

RESERVE = ".reserve"  # + this writer's temporary suffix: a killed run's reservation is cleaned with its leftovers
RESERVE_BYTES = 256 * 1024  # a failure record (result.json, two Parquet files, their manifest copies) fits


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


@contextlib.contextmanager
def _room_for_a_failure(out: Destination, frames: bool):
    """While a video's frames are written (``frames``) to a local disk: RESERVE_BYTES held in a file of this
    writer's own, given back at the end, so that a full disk still leaves room for the failure record."""
    if not frames or out.is_s3:
        yield
        return
    reserve = os.path.basename(storage.partial_name(RESERVE))
    out.write(reserve, bytes(RESERVE_BYTES))
    try:
        yield
    finally:
        out.delete(reserve)


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
    """Write the JPEGs, ``people.parquet``, ``video.parquet``, ``result.json``, then the manifest rows. Fills the
    URLs.

    ``finalize`` runs after the frames are written and before the two documents (to record the final
    processing time, say). ``manifest``: whether the rows are also appended to the destination's tables
    (:mod:`framepipe.tables`, read by :mod:`framepipe.manifests`; None for none)."""
    out = dest.child(video_id)
    out.remove_partials()  # a dead run's leftovers
    run_id = tables.new_run_id()
    with _room_for_a_failure(out, reduction is not None):
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
                    time_ranges=[schema.TimeRange(start_s=round(a, 3), end_s=round(b, 3)) for a, b in p.time_ranges],
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
                        "run_id": run_id,
                        "schema_version": schema.SCHEMA_VERSION,
                    }
                )
            for i, f in enumerate(reduction.representatives.frames):
                url = out.write(f"representative/frame_{i:02d}.jpg", f.jpeg)
                reps.append(schema.RepresentativeFrame(url=url, timestamp_s=round(f.pts_s, 3)))
            shots = [schema.TimeRange(start_s=round(a, 3), end_s=round(b, 3))
                     for a, b in reduction.representatives.shots.spans()] if reduction.representatives.shots else []
            result = result.model_copy(update={"talent_frames": talent, "representative_frames": reps, "shots": shots})
        people_rows = schema.people_table(person_rows)
        out.write("people.parquet", schema.parquet_bytes(people_rows))
        if finalize:
            result = finalize(result)
        now = dt.datetime.now(dt.timezone.utc)
        result_url = out.url("result.json")
        video_rows = schema.videos_table([schema.video_row(result, result_url, now, run_id)])
        out.write("video.parquet", schema.parquet_bytes(video_rows))
        out.write("result.json", result.model_dump_json(indent=2).encode())
        if manifest:  # the destination's datasets: only a video whose result.json is written; its row last
            if people_rows.num_rows:
                tables.append(dest, "people", people_rows)
            tables.append(dest, "videos", video_rows)
        _remove_unnamed(out, result)
        return result


def _remove_unnamed(out: Destination, result: schema.Result) -> None:
    """The JPEGs of an earlier run that this result does not name (a redo that found fewer people, a failed redo):
    removed once the new result and its rows are written, so the folder holds what ``result.json`` names."""
    named = {f.url for f in result.representative_frames}
    named |= {u for t in result.talent_frames for u in (t.url, t.face_url)}
    for folder in ("talent", "representative"):
        for name in out.list(folder):
            if out.url(f"{folder}/{name}") not in named:
                out.delete(f"{folder}/{name}")


def video_meta(source: str, fs: "FrameSource | None") -> schema.VideoMeta:
    """The ``video`` document of an input (only ``source`` when it could not be opened)."""
    if fs is None:
        return schema.VideoMeta(source=source)
    i, size = fs.info, fs.source.size_bytes
    if i.media_type == "image":
        return schema.VideoMeta(
            source=source, media_type="image", width=i.width, height=i.height, total_frames=1, codec=i.codec,
            size_bytes=size,
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
        size_bytes=size,
    )


def write_success(
    destination: Destination,
    video_id: str,
    meta: schema.VideoMeta,
    reduction: VideoReduction,
    warnings: list[str],
    settings: Settings,
    processing: Callable[[], schema.Processing],
    model_name: str | None,
    manifest: str | None = schema.MANIFESTS,
) -> schema.Result:
    """Write every output of a video whose people and frames are chosen. ``processing()`` gives the processing
    figures; it is called again just before the documents are written (so they include writing the frames)."""
    warnings = list(warnings)
    counted = processing
    processing = lambda: counted().model_copy(update={"faces_unlisted": reduction.unlisted_faces,  # noqa: E731
                                                      "faces_embedded": reduction.faces_embedded})
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
        finalize=lambda r: r.model_copy(update={"processing": processing()}),
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
