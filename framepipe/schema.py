"""The one place for framepipe's output schemas: ``result.json`` and the Parquet manifest.

Per video, the manifest is two Parquet files with the explicit schemas below:

* ``video.parquet``: one row per input video (succeeded or failed), :data:`VIDEO_SCHEMA`;
* ``people.parquet``: one row per person found, with the mean embedding, :data:`PERSON_SCHEMA`.

Every run (CLI, backfill, Serve) also appends the same rows to the destination's two Delta Lake tables,
``DEST/manifests/videos`` and ``DEST/manifests/people`` (:mod:`framepipe.tables`; read them with
:func:`framepipe.manifests.load_videos`, ``deltalake.DeltaTable(...).to_pandas()`` or any Delta reader).
``framepipe people`` adds ``DEST/manifests/people_index.parquet`` (:data:`PEOPLE_INDEX_SCHEMA`): the
same person across videos, from the person registry (:data:`GLOBAL_PERSON_SCHEMA`, :data:`MEMBERS_SCHEMA`,
:mod:`framepipe.people.registry`). ``SCHEMA_VERSION`` is stored in each file's schema metadata and in every row; bump it
on any change to these schemas (1.1 added ``media_type``, ``seen_s`` and the people index; 1.2 the registry and
the people index's ``name``; 1.3 the shots, each person's ``time_ranges`` and ``faces_unlisted``; 1.4 ``run_id``,
the write a row belongs to, as the tables keep every write and a video's last is its current one;
:mod:`framepipe.manifests` reads 1.0 files too, with nulls in the new columns).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import io

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

SCHEMA_VERSION = "1.4"
MANIFESTS = "manifests"  # DEST/manifests/{videos,people}: Delta tables (0.2.x: one <video_id>.parquet each)
PEOPLE_INDEX = f"{MANIFESTS}/people_index.parquet"
PEOPLE_INDEX_PART = "people_index.parquet"  # the same table inside each committed version of the registry
REGISTRY = "registry"  # DEST/registry: committed versions of each model's persons, members, index (registry.py)
REPORT = "report"  # DEST/report/index.html


# --------------------------------------------------------------------------------------------------
# result.json (also the webhook payload)
# --------------------------------------------------------------------------------------------------


class VideoMeta(BaseModel):
    source: str
    media_type: Literal["video", "image"] = Field("video", description="A still photo is a one-frame input.")
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    total_frames: int | None = None
    duration_s: float | None = None
    codec: str | None = None
    start_s: float | None = Field(None, description="Presentation time of the first video frame.")
    size_bytes: int | None = None


class Processing(BaseModel):
    duration_s: float
    estimated_cost_usd: float
    hourly_price_usd: float
    device: str
    backend: str | None = None
    models: str | None = None
    frames_sampled: int = 0
    faces_detected: int = 0
    faces_embedded: int = Field(0, description="Faces the recognizer embedded; the others continue a track whose "
                                "embeddings agree and take its embedding (framepipe.tracking).")
    faces_unlisted: int = Field(0, description="Faces of no listed person: too small or blurred to identify and "
                                "matching no person surely, background faces, stray detections.")
    sampling: str = "exact"


class TimeRange(BaseModel):
    start_s: float
    end_s: float


class TalentFrame(BaseModel):
    person_id: int
    url: str
    face_url: str
    timestamp_s: float
    bbox: list[float] = Field(description="x1, y1, x2, y2 in frame pixels")
    quality: float
    appearances: int = Field(description="Number of analysed frames in which the person's face was found.")
    first_seen_s: float
    last_seen_s: float
    seen_s: list[float] = Field([], description="Every analysed timestamp at which the person's face was found.")
    time_ranges: list[TimeRange] = Field(
        [], description="The person's appearances: runs of consecutive samples of one shot in which the face was "
        "found, each from halfway to the sample before to halfway to the sample after.")
    signed_url: str | None = Field(None, description="Presigned HTTPS URL of the frame, where configured.")
    signed_face_url: str | None = None


class RepresentativeFrame(BaseModel):
    url: str
    timestamp_s: float
    signed_url: str | None = None


class ErrorInfo(BaseModel):
    type: str
    message: str

    def __str__(self) -> str:
        """``type: message``, as summaries and logs show a failure."""
        return f"{self.type}: {self.message}"


class Result(BaseModel):
    schema_version: str = SCHEMA_VERSION
    video_id: str
    status: Literal["succeeded", "failed"]
    video: VideoMeta
    processing: Processing
    talent_frames: list[TalentFrame] = []
    representative_frames: list[RepresentativeFrame] = []
    shots: list[TimeRange] = Field(
        [], description="The shots found on the sampled frames; a cut is placed halfway between the samples around it.")
    short_video: bool = Field(False, description="Fewer decodable frames than representative frames asked for.")
    relaxed_rules: list[str] = Field([], description="Representative-frame rules relaxed to reach the count.")
    warnings: list[str] = []
    error: ErrorInfo | None = None


# --------------------------------------------------------------------------------------------------
# Parquet manifest
# --------------------------------------------------------------------------------------------------

_META = {b"framepipe_schema_version": SCHEMA_VERSION.encode()}
TIME_RANGE = pa.struct([pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64())])

VIDEO_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("media_type", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_type", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("fps", pa.float64()),
        pa.field("total_frames", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("codec", pa.string()),
        pa.field("start_s", pa.float64()),
        pa.field("size_bytes", pa.int64()),
        pa.field("frames_sampled", pa.int32()),
        pa.field("faces_detected", pa.int32()),
        pa.field("faces_unlisted", pa.int32()),
        pa.field("people", pa.int32()),
        pa.field("shots", pa.list_(TIME_RANGE)),
        pa.field("representative_urls", pa.list_(pa.string())),
        pa.field("representative_timestamps_s", pa.list_(pa.float64())),
        pa.field("processing_s", pa.float64()),
        pa.field("estimated_cost_usd", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("models", pa.string()),
        pa.field("result_url", pa.string()),
        pa.field("processed_at", pa.timestamp("ms", tz="UTC")),
        pa.field("run_id", pa.string()),  # the write that made this row (the tables keep a video's last: 1.4)
        pa.field("schema_version", pa.string(), nullable=False),
    ],
    metadata=_META,
)

PERSON_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("person_id", pa.int32(), nullable=False),
        pa.field("frame_url", pa.string(), nullable=False),
        pa.field("face_url", pa.string(), nullable=False),
        pa.field("timestamp_s", pa.float64(), nullable=False),
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("quality", pa.float32(), nullable=False),
        pa.field("det_score", pa.float32()),
        pa.field("appearances", pa.int32(), nullable=False),
        pa.field("first_seen_s", pa.float64(), nullable=False),
        pa.field("last_seen_s", pa.float64(), nullable=False),
        pa.field("seen_s", pa.list_(pa.float64())),
        pa.field("time_ranges", pa.list_(TIME_RANGE)),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("embedding_model", pa.string()),
        pa.field("run_id", pa.string()),  # the video row of the same run_id is the video's current one
        pa.field("schema_version", pa.string(), nullable=False),
    ],
    metadata=_META,
)

PEOPLE_INDEX_SCHEMA = pa.schema(
    [
        pa.field("global_person_id", pa.int32(), nullable=False),
        pa.field("name", pa.string()),  # given with framepipe people --name
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("person_id", pa.int32(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),  # cosine to the global person's mean embedding
        pa.field("source", pa.string(), nullable=False),
        pa.field("face_url", pa.string()),
        pa.field("frame_url", pa.string()),
        pa.field("timestamp_s", pa.float64()),
        pa.field("quality", pa.float32()),
        pa.field("embedding_model", pa.string()),
        pa.field("schema_version", pa.string(), nullable=False),
    ],
    metadata=_META,
)


# the person registry, one per destination and embedding model (framepipe.registry)
GLOBAL_PERSON_SCHEMA = pa.schema(
    [
        pa.field("global_person_id", pa.int32(), nullable=False),  # never renumbered, never reused
        pa.field("name", pa.string()),
        pa.field("merged_into", pa.int32()),  # set when merged into another person (the id stays an alias)
        pa.field("members", pa.int32(), nullable=False),  # (video, person) rows attached
        pa.field("embedding_sum", pa.list_(pa.float32()), nullable=False),  # the centroid, unnormalised
        pa.field("created_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("schema_version", pa.string(), nullable=False),
    ],
    metadata=_META,
)

MEMBERS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("person_id", pa.int32(), nullable=False),
        pa.field("global_person_id", pa.int32(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),  # cosine to the global person when attached
        pa.field("pinned", pa.bool_(), nullable=False),  # placed by a correction (--split): kept where it is
        pa.field("source", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("seen_s", pa.list_(pa.float64())),
        pa.field("face_url", pa.string()),
        pa.field("frame_url", pa.string()),
        pa.field("timestamp_s", pa.float64()),
        pa.field("quality", pa.float32()),
        pa.field("schema_version", pa.string(), nullable=False),
    ],
    metadata=_META,
)


def video_row(result: Result, result_url: str | None, processed_at, run_id: str | None = None) -> dict:
    v, p = result.video, result.processing
    return {
        "video_id": result.video_id,
        "source": v.source,
        "media_type": v.media_type,
        "status": result.status,
        "error_type": result.error.type if result.error else None,
        "error_message": result.error.message if result.error else None,
        "width": v.width,
        "height": v.height,
        "fps": v.fps,
        "total_frames": v.total_frames,
        "duration_s": v.duration_s,
        "codec": v.codec,
        "start_s": v.start_s,
        "size_bytes": v.size_bytes,
        "frames_sampled": p.frames_sampled,
        "faces_detected": p.faces_detected,
        "faces_unlisted": p.faces_unlisted,
        "people": len(result.talent_frames),
        "shots": [s.model_dump() for s in result.shots],
        "representative_urls": [r.url for r in result.representative_frames],
        "representative_timestamps_s": [r.timestamp_s for r in result.representative_frames],
        "processing_s": p.duration_s,
        "estimated_cost_usd": p.estimated_cost_usd,
        "device": p.device,
        "models": p.models,
        "result_url": result_url,
        "processed_at": processed_at,
        "run_id": run_id,
        "schema_version": SCHEMA_VERSION,
    }


def videos_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=VIDEO_SCHEMA)


def people_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PERSON_SCHEMA)


def parquet_bytes(table: pa.Table | Iterable[pa.Table], row_group_size: int | None = None,
                  arrow_schema: pa.Schema | None = None) -> bytes:
    """A table as the bytes of a Parquet file, as every manifest file is written (zstd; ``row_group_size``: rows
    per row group, small where readers filter on a sorted column). Or the tables of an iterable, each written as
    it comes (in ``arrow_schema``): a large file made from slices, never whole in Arrow besides its bytes."""
    if isinstance(table, pa.Table):
        table, arrow_schema = [table], table.schema
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, arrow_schema, compression="zstd") as writer:
        for part in table:
            writer.write_table(part, row_group_size=row_group_size)
    return buf.getvalue()
