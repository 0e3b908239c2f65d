"""The state of one video while its frames are analysed: pure data, no I/O.

Two halves, fed by different stages of a distributed run but by the same code:

* :class:`FramePicks` sees every sampled frame's measures and keeps the candidates for the representative frames
  (JPEG-encoded only when a frame is kept);
* :class:`PeopleState` takes each analysed frame's faces (and the frame's JPEG, for frames that hold a face).

:class:`VideoState` holds both for a run in one process. :func:`reduce` turns them into people (clustering) and
representative frames: a :class:`VideoReduction`, which :mod:`framepipe.outputs` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from framepipe import clustering, selection
from framepipe.config import Settings
from framepipe.errors import NoFrames
from framepipe.faces import Face
from framepipe.video import VideoInfo

Jpeg = bytes | Callable[[], bytes]  # the bytes, or a function making them (called only if the frame is kept)


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
    time_ranges: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each appearance


@dataclass
class VideoReduction:
    people: list[Person]
    representatives: selection.Representatives
    frames: dict[float, bytes]  # JPEG of each frame an output needs, by pts
    frames_sampled: int
    faces_detected: int
    unlisted_faces: int = 0  # faces of no listed person (too weak to identify, background faces, stray detections)
    faces_embedded: int = 0  # faces the recognizer saw (the others took their track's embedding: tracking.py)


def _once(jpeg: Jpeg) -> Callable[[], bytes]:
    made: list[bytes] = [jpeg] if isinstance(jpeg, bytes) else []

    def get() -> bytes:
        if not made:
            made.append(jpeg())  # type: ignore[operator]
        return made[0]

    return get


class FramePicks:
    """Candidates for the representative frames, from every sampled frame's measures."""

    def __init__(self, info: VideoInfo, settings: Settings):
        self.picker = selection.RepresentativePicker.from_settings(info.start_s, info.duration_s, settings)
        self.frames_sampled = 0

    def add(self, pts_s: float, measure: selection.FrameMeasure, jpeg: Jpeg) -> None:
        self.frames_sampled += 1
        self.picker.note(pts_s, measure)
        if self.picker.wants(pts_s, measure):
            self.picker.offer(selection.FrameStats(pts_s, *measure, jpeg=_once(jpeg)()))

    def pick(self) -> selection.Representatives:
        return self.picker.pick()

    def shots(self) -> selection.Shots:
        return self.picker.shots()


class PeopleState:
    """Every face seen in the video, and the JPEG of each frame holding one."""

    def __init__(self):
        self.records: list[FaceRecord] = []
        self.face_frames: dict[float, bytes] = {}

    def add(self, pts_s: float, faces: list[Face], jpeg: Jpeg) -> None:
        if faces:
            self.face_frames[pts_s] = _once(jpeg)()
            self.records.extend(FaceRecord(pts_s, f) for f in faces)

    def people(self, settings: Settings, shots: selection.Shots | None = None) -> list[Person]:
        """Cluster the faces into people (:mod:`framepipe.clustering`); ``shots``: every sampled frame's time and
        shot (without them, frames holding faces count as consecutive samples of one shot)."""
        return self.group(settings, shots)[0]

    def group(self, settings: Settings, shots: selection.Shots | None = None, one_frame: bool = False
              ) -> tuple[list[Person], int]:
        """(people, faces of no listed person); ``one_frame``: the input is one frame, a photo."""
        records = sorted(self.records, key=lambda r: r.pts_s)  # frames may arrive out of order
        if not records:
            return [], 0
        times = np.array([r.pts_s for r in records])
        if shots and shots.times:
            sample = np.array([shots.index_of(t) for t in times])
            shot = np.array([shots.ids[i] for i in sample])
        else:
            sample, shot = np.unique(times, return_inverse=True)[1], np.zeros(len(times), dtype=int)
        grouping = clustering.group_faces(
            np.stack([r.face.embedding for r in records]),
            np.array([r.face.quality for r in records]),
            np.array([r.face.det_score for r in records]),
            np.stack([r.face.bbox for r in records]),
            sample,
            shot,
            clustering.Params.from_settings(settings, len(records[0].face.embedding)),
            one_frame,
        )
        labels = grouping.labels
        people = []
        for pid in range(int(labels.max()) + 1 if len(labels) else 0):
            members = [r for r, lab in zip(records, labels) if lab == pid]
            best = max(members, key=lambda r: r.face.quality)
            mean = np.mean([r.face.embedding for r in members], axis=0)
            seen = sorted({r.pts_s for r in members})
            people.append(
                Person(
                    person_id=pid,
                    best=best,
                    appearances=len(seen),
                    first_seen_s=seen[0],
                    last_seen_s=seen[-1],
                    mean_embedding=(mean / (np.linalg.norm(mean) + 1e-12)).astype(np.float32),
                    seen_s=seen,
                    time_ranges=shots.ranges(seen) if shots and shots.times else [(seen[0], seen[-1])],
                )
            )
        return people, grouping.unlisted


def reduce(
    people_state: PeopleState, representatives: selection.Representatives, frames_sampled: int, settings: Settings
) -> VideoReduction:
    """People and representative frames of a video whose frames have all been analysed."""
    if frames_sampled == 0:
        raise NoFrames("no frame of the video could be decoded")
    people, unlisted = people_state.group(settings, representatives.shots, one_frame=frames_sampled == 1)
    frames = {p.best.pts_s: people_state.face_frames[p.best.pts_s] for p in people}
    frames.update({f.pts_s: f.jpeg for f in representatives.frames})
    embedded = sum(r.face.embedded for r in people_state.records)
    return VideoReduction(people, representatives, frames, frames_sampled, len(people_state.records), unlisted,
                          embedded)


class VideoState:
    """Both halves, for a video analysed in one process."""

    def __init__(self, info: VideoInfo, settings: Settings):
        self.settings = settings
        self.picks = FramePicks(info, settings)
        self.people = PeopleState()

    @property
    def frames_sampled(self) -> int:
        return self.picks.frames_sampled

    @property
    def faces_detected(self) -> int:
        return len(self.people.records)

    def add(self, pts_s: float, measure: selection.FrameMeasure, faces: list[Face], jpeg: Jpeg) -> None:
        """One analysed frame: its measures, its faces and its JPEG (or a function making it, called at most once
        and only if the frame holds a face or may become a representative frame)."""
        get = _once(jpeg)
        self.people.add(pts_s, faces, get)
        self.picks.add(pts_s, measure, get)

    def finish(self) -> VideoReduction:
        return reduce(self.people, self.picks.pick(), self.frames_sampled, self.settings)
