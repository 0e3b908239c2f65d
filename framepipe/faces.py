"""Face detection, embedding and the face quality score.

:class:`FaceModel` loads an InsightFace model pack (a detector such as SCRFD and an ArcFace-style recognizer)
once per process and turns a BGR frame into :class:`Face` records.

Quality score
-------------
Each face gets ``quality`` in [0, 1], the weighted geometric mean of five factors, each in [0, 1]:

============  ======  ==========================================================================================
factor        weight  definition
============  ======  ==========================================================================================
confidence    0.20    detector score mapped linearly from 0.5 (-> 0) to 0.9 (-> 1)
size          0.20    shorter side of the bbox / 112 px (the recognizer's input size), capped at 1
sharpness     0.20    variance of the Laplacian of the aligned 112x112 grey face, v / (v + 100)
frontal       0.25    from the 5 landmarks: yaw (nose off the eyes' midpoint, relative to half the eye
                      distance; 0 at 1.5 = profile) times pitch (nose height between the eye line and the
                      mouth line, 0.5 ideal)
exposure      0.15    mean grey level of the aligned face near mid-grey, times its contrast (std / 40, capped)
============  ======  ==========================================================================================

A geometric mean means one very bad factor (a blurred or profile face) sinks the score, whatever the others;
each factor is floored at 0.05 so that none alone takes the score to zero.
The best frame of a person is the frame holding that person's face with the highest quality.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import io
import logging
import math
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from framepipe import clustering, providers
from framepipe.config import Settings
from framepipe.errors import ModelNotFound

log = logging.getLogger(__name__)

PHOTO_PAD = 0.25  # a photo is searched again on a black canvas this much of its size larger on each side
SAME_FACE_IOU = 0.4  # two detections of a photo overlapping this much are one face


def _once(faces: list["Face"], preferred: list["Face"] = ()) -> list["Face"]:
    """Detections of one picture with one of two overlapping ones dropped (OpenCV's NMS): a ``preferred``
    detection wins over any of ``faces``, the more confident one otherwise; the one kept takes the higher
    confidence of the two."""
    every = [*preferred, *faces]
    if len(every) < 2:
        return every
    xyxy = np.array([f.bbox for f in every], dtype=np.float32)
    boxes = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]).tolist()  # x, y, width, height
    ranks = [f.det_score + (1.0 if i < len(preferred) else 0.0) for i, f in enumerate(every)]  # scores are <= 1
    keep = np.asarray(cv2.dnn.NMSBoxes(boxes, ranks, 0.0, SAME_FACE_IOU), dtype=int).ravel()
    scores = np.array([f.det_score for f in every])
    for i, overlap in zip(keep, clustering.iou(xyxy[keep], xyxy)):  # one face: as sure as its surer detection
        every[i].det_score = float(scores[overlap >= SAME_FACE_IOU].max())
    return sorted((every[i] for i in keep), key=lambda f: -f.det_score)


QUALITY_WEIGHTS = {"confidence": 0.20, "size": 0.20, "sharpness": 0.20, "frontal": 0.25, "exposure": 0.15}


@dataclass
class Face:
    bbox: np.ndarray  # x1, y1, x2, y2 in frame pixels
    kps: np.ndarray  # 5 x 2 landmarks: eyes, nose, mouth corners
    det_score: float
    quality: float = 0.0
    factors: dict = field(default_factory=dict)
    embedding: np.ndarray | None = field(default=None, repr=False)  # L2-normalised
    embedded: bool = True  # False: the embedding is its track's, the face itself was not embedded (tracking.py)
    crop: np.ndarray | None = field(default=None, repr=False)  # aligned 112x112 BGR, until it is embedded

    @property
    def size_px(self) -> float:
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def quality_factors(det_score: float, bbox: np.ndarray, kps: np.ndarray, aligned_bgr: np.ndarray) -> dict:
    """The five factors of the quality score (see the module docstring)."""
    size = min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    grey = cv2.cvtColor(aligned_bgr, cv2.COLOR_BGR2GRAY)
    lap_var = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    left_eye, right_eye, nose, mouth_l, mouth_r = kps
    eye_mid = (left_eye + right_eye) / 2
    eye_dist = float(np.linalg.norm(right_eye - left_eye)) + 1e-6
    yaw = abs(float(nose[0] - eye_mid[0])) / (eye_dist / 2)
    mouth_mid = (mouth_l + mouth_r) / 2
    span = float(mouth_mid[1] - eye_mid[1])
    pitch = abs((float(nose[1] - eye_mid[1]) / span) - 0.5) / 0.5 if span > 1e-6 else 1.0
    mean, std = float(grey.mean()), float(grey.std())
    return {
        "confidence": _clip01((det_score - 0.5) / 0.4),
        "size": _clip01(size / 112.0),
        "sharpness": lap_var / (lap_var + 100.0),
        "frontal": _clip01(1.0 - yaw / 1.5) * _clip01(1.0 - pitch),
        "exposure": _clip01(1.0 - abs(mean - 128.0) / 128.0) * _clip01(std / 40.0),
    }


def quality_score(factors: dict) -> float:
    total = sum(QUALITY_WEIGHTS.values())
    log_q = sum(w * np.log(max(factors[k], 0.05)) for k, w in QUALITY_WEIGHTS.items())
    return float(np.exp(log_q / total))


def resolve_pack(models: str, model_root: str) -> tuple[str, str]:
    """(name-or-path for insightface, root): a folder path is used as it is; a name is looked up under root, and
    downloaded there by insightface if it is one of its packs (``buffalo_l``). A pack that is neither is one
    :class:`ModelNotFound` line that says how to name one, before anything else starts (the backfill checks it
    before Ray)."""
    expanded = os.path.expanduser(models)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded), os.path.expanduser(model_root)
    if os.sep in models or models.startswith("."):
        raise ModelNotFound(f"model pack folder {models!r} does not exist")
    root = os.path.expanduser(model_root)
    folder = os.path.join(root, "models", models)
    if not glob.glob(os.path.join(folder, "*.onnx")):
        from insightface.utils.storage import ensure_available

        log.info("model pack %r is not in %s: downloading it", models, folder)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its progress lines: never into a command's output
                ensure_available("models", models, root=root)
        except Exception as e:
            raise ModelNotFound(
                f"model pack {models!r} is not in {folder} and could not be downloaded ({type(e).__name__}); "
                "name a pack folder with --models PATH (or FRAMEPIPE_MODELS=PATH)") from None
    return models, root


class FaceModel:
    """An InsightFace pack (detector + recognizer) on onnxruntime, loaded once per process."""

    def __init__(self, settings: Settings):
        from insightface.app import FaceAnalysis
        from insightface.utils import face_align

        self._norm_crop = face_align.norm_crop
        name, root = resolve_pack(settings.models, settings.model_root)
        wanted = providers.choose_providers(settings.device)
        try:
            app = FaceAnalysis(
                name=name,
                root=root,
                allowed_modules=["detection", "recognition"],
                providers=wanted,
                sess_options=providers.session_options(settings.intra_op_threads),
            )
            app.prepare(ctx_id=0 if wanted[0] == providers.CUDA else -1, det_size=(settings.det_size,) * 2)
        except ModelNotFound:
            raise
        except Exception as e:  # insightface raises assorted errors for missing or broken packs
            raise ModelNotFound(f"cannot load model pack {settings.models!r}: {e}") from None
        if "detection" not in app.models or "recognition" not in app.models:
            raise ModelNotFound(f"model pack {settings.models!r} needs a detector and a recognizer")
        self.detector = app.det_model
        self.recognizer = app.models["recognition"]
        self.pack = os.path.basename(name.rstrip("/"))
        self.device = providers.active_device(self.detector.session)
        if settings.device == "cuda" and self.device != "cuda":
            log.warning("CUDA was asked for but onnxruntime runs on %s", self.detector.session.get_providers())
        self.embedding_dim = int(self.recognizer.session.get_outputs()[0].shape[-1])
        self.det_size = settings.det_size
        self.min_det_score = settings.min_det_score
        self.min_face_px = settings.min_face_px
        self.detector.det_thresh = settings.min_det_score
        log.info("model pack %s on %s (%d-d embeddings)", self.pack, self.device, self.embedding_dim)

    def detector_input(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(width, height) fed to the detector for a frame of this shape.

        SCRFD letterboxes a frame into det_size x det_size at the top-left corner. A 16:9 frame fills only
        640x360 of 640x640; the rest is padding the network still pays for. Feeding the frame's own aspect
        (rounded up to the stride of 32, plus a 32 px margin so the border of the picture sees the same
        padding) keeps the same scale and the same detections (measured: identical counts, boxes within
        1.3 px on 105 shared frames) for about a third less detector time."""
        h, w = shape[:2]
        d = self.det_size
        nw, nh = (d, int(d * h / w)) if h <= w else (int(d * w / h), d)
        return min(d, math.ceil((nw + 32) / 32) * 32), min(d, math.ceil((nh + 32) / 32) * 32)

    def detect(self, image: np.ndarray, photo: bool = False) -> list[Face]:
        """Faces in a BGR frame that pass the confidence and size filters (no embedding yet). ``photo``: a
        one-frame input, also searched on a canvas ``PHOTO_PAD`` larger on every side, where a close-up whose face
        fills the picture (beyond the detector's largest anchors, or cut by its border) is found; a face found on
        both is kept once, with its detection on the canvas, whose landmarks align it better (the head whole
        inside the detector's view: LFW View 2 through the pipeline 99.48% -> 99.59%, bench/lfw_view2.py)."""
        faces = self._detect(image)
        if photo:
            h, w = image.shape[:2]
            pad_y, pad_x = round(h * PHOTO_PAD), round(w * PHOTO_PAD)
            canvas = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            shift = np.array([pad_x, pad_y], dtype=np.float32)
            more = []
            for f in self._detect(canvas):
                f.bbox = np.clip(f.bbox - np.tile(shift, 2), 0, [w, h, w, h]).astype(np.float32)
                f.kps = (f.kps - shift).astype(np.float32)
                if f.size_px >= self.min_face_px:
                    more.append(f)
            faces = _once(faces, preferred=more)
        return faces

    def _detect(self, image: np.ndarray) -> list[Face]:
        size = self.detector_input(image.shape)
        bboxes, kpss = self.detector.detect(image, input_size=size, max_num=0, metric="default")
        faces = []
        for box, kps in zip(bboxes, kpss if kpss is not None else [None] * len(bboxes)):
            if kps is None:
                continue
            face = Face(bbox=box[:4].astype(np.float32), kps=kps.astype(np.float32), det_score=float(box[4]))
            if face.det_score >= self.min_det_score and face.size_px >= self.min_face_px:
                faces.append(face)
        return faces

    def analyze(self, image: np.ndarray, photo: bool = False) -> list[Face]:
        return self.analyze_batch([image], photo)[0]

    def analyze_batch(self, images: list[np.ndarray], photo: bool = False) -> list[list[Face]]:
        """Faces of each frame, every one embedded (:meth:`detect_batch`, then :meth:`embed` in one recognizer
        call). ``photo``: the frames are one-frame inputs (:meth:`detect`)."""
        found = self.detect_batch(images, photo)
        self.embed([f for faces in found for f in faces])
        return found

    def detect_batch(self, images: list[np.ndarray], photo: bool = False) -> list[list[Face]]:
        """Faces of each frame, aligned (``Face.crop``) and scored, not embedded yet: what decides which faces the
        recognizer must see (:mod:`framepipe.tracking`)."""
        found = [self.detect(image, photo) for image in images]
        for image, faces in zip(images, found):
            for face in faces:
                face.crop = self._norm_crop(image, landmark=face.kps, image_size=112)
                face.factors = quality_factors(face.det_score, face.bbox, face.kps, face.crop)
                face.quality = quality_score(face.factors)
        return found

    def embed(self, faces: list[Face]) -> None:
        """Embeds these aligned faces in one recognizer call (it takes any batch size; a face's embedding does not
        depend on the others in the batch: tests/test_pipeline.py); their crops are let go."""
        if not faces:
            return
        feats = self.embed_crops([f.crop for f in faces])
        for face, feat in zip(faces, feats):
            face.embedding, face.crop = feat, None

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """Unit embeddings of aligned 112x112 BGR faces, one row each."""
        feats = self.recognizer.get_feat(crops).reshape(len(crops), -1).astype(np.float32)
        return feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)


@functools.lru_cache(maxsize=4)
def _cached(settings_key: tuple) -> FaceModel:
    return FaceModel(Settings.model_validate(dict(settings_key)))


def load_face_model(settings: Settings) -> FaceModel:
    """The process-wide model for these settings (loaded on first use)."""
    keys = ("models", "model_root", "det_size", "device", "intra_op_threads", "min_det_score", "min_face_px")
    return _cached(tuple((k, getattr(settings, k)) for k in keys))
