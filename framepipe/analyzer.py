"""Where faces are found: one small interface, several homes for the models.

An :class:`Analyzer` turns a batch of frames into the faces of each (:class:`~framepipe.faces.Face`, with
embedding and quality), in one step (``analyze``) or two (``detect``, then ``embed`` for the faces that need it:
:mod:`framepipe.tracking` decides which). The per-video pipeline (:mod:`framepipe.pipeline`) only talks to this
interface:

* :class:`LocalAnalyzer`: the models in this process (``framepipe extract``, the Ray backfill's actors);
* ``serve.model.HandleAnalyzer``: the Serve model deployment, through its handle (batched across callers).
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from framepipe.config import Settings
from framepipe.faces import Face, FaceModel, load_face_model


@runtime_checkable
class Analyzer(Protocol):
    device: str  # "cpu" or "cuda": what really runs the models
    pack: str  # the model pack's name
    batch_size: int  # frames per analyze() call that suit it

    def analyze(self, images: Sequence[np.ndarray], photo: bool = False) -> list[list[Face]]: ...
    # photo: the images are one-frame inputs (photos), searched for close-ups too (FaceModel.detect)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]: ...
    # the faces of video frames, aligned (Face.crop) and scored, not embedded

    def embed(self, faces: list[Face]) -> None: ...
    # sets these detected faces' embeddings


class LocalAnalyzer:
    """The face models loaded in this process (once per process and settings)."""

    def __init__(self, model: FaceModel, batch_size: int = 4):
        self.model = model
        self.device, self.pack = model.device, model.pack
        self.batch_size = batch_size

    @classmethod
    def load(cls, settings: Settings) -> "LocalAnalyzer":
        return cls(load_face_model(settings), settings.analyze_batch)

    def analyze(self, images: Sequence[np.ndarray], photo: bool = False) -> list[list[Face]]:
        return self.model.analyze_batch(list(images), photo)

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return self.model.detect_batch(list(images))

    def embed(self, faces: list[Face]) -> None:
        self.model.embed(faces)
