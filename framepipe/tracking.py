"""Which faces need the recognizer: a face followed from one sample to the next of the same shot is embedded only
where identity needs it, and the faces between two looks at it take their embedding when the looks agree.

The recognizer is the costliest model per face (buffalo's 512-d ArcFace: about 10 ms a face on a CPU core, as much
as the detector's whole frame), and a person seen in 40 consecutive samples of one shot needs only a few looks to
be identified. :class:`Tracks` follows the faces of one video through its samples, in order, by position (as
SORT/ByteTrack do, but between samples a second apart and only where nothing is ambiguous):

* **a link** continues a track when the face is in the next frame of the same lane (a video's parallel readers
  each read a part of it in time order), shot and segment, its box overlaps the track's last box by ``LINK_IOU``,
  and no other face or track overlaps either of them by ``NEAR_IOU``;
* **a look** (the recognizer runs) at a track's first face, every ``REFRESH`` samples, and at its last face when it
  ends (a cut, the face gone, a new segment, the end of the frames); and, at each look, at the clearest face
  skipped since the one before when it is clearer than every face of the track embedded so far: so a track's
  best face, and every person's talent face, always is, but a face growing clearer over a few samples (turning
  towards the camera) is embedded once, at its clearest, not at each step;
* **the faces between two looks** take the first look's embedding (``Face.embedded`` False) when the two looks
  agree (cosine >= ``AGREE``); when they do not, each is embedded on its own: a cut the colours did not show (two
  photos of a montage in one place on screen) costs embeddings, never a face given somebody else's.

The grouping (:mod:`framepipe.clustering`) then sees a skipped face as the face seen again, which the two looks
around it confirmed. Photos (one-frame inputs) have no track: every face is embedded. What is decided depends
on boxes, quality and the frames' colour signatures only, never on how frames are batched or in which order the
lanes deliver them, and tracks start afresh every ``SEGMENT`` frames of a lane: the CLI, Serve and both backfill
layouts (whose face actors take a video in blocks of whole segments) embed the same faces and write the same
outputs. Measured on the labelled footage and
the 3-minute bench file: docs/pipeline.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from framepipe import clustering, selection
from framepipe.faces import Face

if TYPE_CHECKING:
    from framepipe.analyzer import Analyzer

LINK_IOU = 0.5  # a face continues a track when their boxes overlap this much (samples are ~1 s apart) ...
NEAR_IOU = 0.1  # ... and no other face or track overlaps either of them this much
AGREE = 0.6  # two looks at a track agree at this cosine or more
REFRESH = 8  # a track is embedded again after this many samples without an embedding
SEGMENT = 16  # tracks start afresh every this many frames of a lane, in every front door: the backfill's face
# actors see a video's frames in blocks of this many (jobs/stages.py), and the outputs must not depend on the door


def analyse_frames(analyzer: "Analyzer", images: Sequence[np.ndarray], signatures: Sequence[bytes | None],
                   tracks: "Tracks", positions: Sequence[tuple[int, int]] | None = None, photo: bool = False
                   ) -> list[list[Face]]:
    """The faces of sampled frames of one video (their colour signatures; ``positions``: each frame's (lane, index),
    :class:`~framepipe.framesource.SampledFrame`; default: one lane, in order): one detector pass per frame, then
    the recognizer for the faces ``tracks`` asks for. A face skipped gets its embedding once a later look at its
    track agrees (by :func:`conclude` at the latest), so call :func:`conclude` after the last frame. ``photo``:
    one-frame inputs, which have no track: searched for close-ups too (FaceModel.detect), every face embedded."""
    if photo:
        return analyzer.analyze(images, photo=True)
    found = analyzer.detect(images)
    todo = []
    for i, (signature, faces) in enumerate(zip(signatures, found)):
        todo += tracks.plan(signature, faces, None if positions is None else positions[i])
    _embed(analyzer, tracks, todo)
    return found


def conclude(analyzer: "Analyzer", tracks: "Tracks") -> None:
    """The end of the frames (of the video, or of a caller's share of them): every track ends, and each face
    skipped since its track's last look gets its embedding (or its own, where the track's last face disagrees)."""
    _embed(analyzer, tracks, tracks.finish())


def _embed(analyzer: "Analyzer", tracks: "Tracks", todo: list[Face]) -> None:
    while todo:
        analyzer.embed(todo)
        todo = tracks.settle()


@dataclass
class _Track:
    box: np.ndarray  # its last face's
    look: Face | None = None  # its last face embedded (or to be, in this batch): the last look at it
    best_quality: float = -1.0  # of its faces embedded
    since: int = 0  # samples since its last look
    skipped: list[Face] = field(default_factory=list)  # faces not embedded since its last look (crops kept)


class Tracks:
    """The tracks of one video's faces, fed every sampled frame in order. :meth:`plan` says which faces of a frame
    to embed; :meth:`settle`, once they are, gives the faces between two looks at a track their embedding when the
    two agree and returns them to be embedded when not (a face that was somebody else after all); :meth:`finish`
    ends every track. ``enabled`` False: every face is embedded (the behaviour before)."""

    def __init__(self, cut_distance: float, enabled: bool = True):
        self.cut_distance = cut_distance
        self.enabled = enabled
        self.lanes: dict[int, tuple[int, bytes | None, list[_Track]]] = {}  # lane -> its last frame's index,
        # colour signature and tracks
        self._waiting: list[tuple[list[Face], Face, Face]] = []  # (skipped faces, the looks before and after them)

    def plan(self, signature: bytes | None, faces: Sequence[Face], position: tuple[int, int] | None = None
             ) -> list[Face]:
        """The faces to embed now: those of a sampled frame that need it, and the last face of each track that
        ended with the frame before. ``position``: the frame's (lane, index): a video's frames come in lanes (the
        parts its readers decode at once), each in time order; default: lane 0, the frame after the last one. A
        face continues a track only from the lane's previous frame, in the same shot and segment."""
        lane, index = position if position is not None else (0, self.lanes.get(0, (-1,))[0] + 1)
        last, before, live = self.lanes.get(lane, (-1, None, []))
        cut = (index != last + 1 or index % SEGMENT == 0 or before is None or signature is None
               or selection.colour_distance(before, signature) > self.cut_distance)
        linked = self._link([] if cut else live, faces)
        continued = {id(t) for t in linked.values()}
        todo = [f for t in live if id(t) not in continued for f in self._close(t)]
        live = []
        for i, face in enumerate(faces):
            track = linked.get(i) or _Track(box=face.bbox)
            track.box = face.bbox
            if not self.enabled or self._needs_embedding(track):
                todo += self._look(track, face)
            else:
                track.since += 1
                track.skipped.append(face)
            live.append(track)
        self.lanes[lane] = (index, signature, live)
        return todo

    def settle(self) -> list[Face]:
        """After the faces :meth:`plan` or :meth:`finish` returned got their embeddings: the faces skipped between
        two looks at a track take the first look's embedding when the two agree; the others are returned, to be
        embedded too (then :meth:`settle` again)."""
        doubtful = []
        for skipped, before, after in self._waiting:
            if before.embedding is None or after.embedding is None:
                raise ValueError("a face planned for the recognizer was not embedded")
            if float(before.embedding @ after.embedding) >= AGREE:
                for face in skipped:
                    face.embedding, face.embedded, face.crop = before.embedding, False, None
            else:
                doubtful += skipped
        self._waiting = []
        return doubtful

    def finish(self) -> list[Face]:
        """Every track ends: the faces to embed now (each track's last face, if it was skipped)."""
        todo = [f for _, _, live in self.lanes.values() for t in live for f in self._close(t)]
        self.lanes = {}
        return todo

    def _close(self, track: _Track) -> list[Face]:
        """A track that ends: its last face, if skipped, is looked at (the faces skipped before it are checked
        against it)."""
        if not track.skipped:
            return []
        return self._look(track, track.skipped.pop())

    def _look(self, track: _Track, face: Face) -> list[Face]:
        """A look at ``face``: the faces to embed, ``face`` and, when one of the faces skipped since the last look is
        clearer than it and than every face of the track embedded so far, that one too (a track's best face is
        always embedded, but only once the track has shown it, not at each face clearer than the ones before)."""
        todo = [face]
        skipped, track.skipped = track.skipped, []
        if skipped:  # the faces skipped since the last look: checked once the looks around them are embedded
            best = max(range(len(skipped)), key=lambda i: skipped[i].quality)
            if skipped[best].quality > max(track.best_quality, face.quality):
                todo.insert(0, skipped[best])
                track.best_quality = skipped[best].quality
                self._wait(skipped[:best], track.look, skipped[best])
                self._wait(skipped[best + 1:], skipped[best], face)
            else:
                self._wait(skipped, track.look, face)
        track.look = face
        track.best_quality = max(track.best_quality, face.quality)
        track.since = 0
        return todo

    def _wait(self, skipped: list[Face], before: Face | None, after: Face) -> None:
        if skipped:
            self._waiting.append((skipped, before, after))

    @staticmethod
    def _needs_embedding(track: _Track) -> bool:
        """A new track's first face, and a look every REFRESH samples (its clearest faces are looked at with the
        looks, :meth:`_look`). None of it depends on embeddings: the same faces are embedded however the frames
        are batched."""
        return track.look is None or track.since + 1 >= REFRESH

    @staticmethod
    def _link(previous: list[_Track], faces: Sequence[Face]) -> dict[int, _Track]:
        """Face index -> the track (of the previous frame) it surely continues: its box overlapping the face's by
        LINK_IOU, and nothing else overlapping either of them by NEAR_IOU."""
        if not previous or not faces:
            return {}
        overlap = clustering.iou(np.stack([t.box for t in previous]), np.stack([f.bbox for f in faces]))
        out = {}
        for j in range(len(faces)):
            i = int(np.argmax(overlap[:, j]))
            if overlap[i, j] < LINK_IOU:
                continue
            if (overlap[:, j] >= NEAR_IOU).sum() > 1 or (overlap[i] >= NEAR_IOU).sum() > 1:
                continue  # another face or track close by: the link is in doubt
            out[j] = previous[i]
        return out
