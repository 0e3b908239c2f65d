"""``FaceModelDeployment`` (the deployment ``FaceModel``): the face models once per replica, frames from every
caller batched together (GPU where there is one); ``HandleAnalyzer``: that deployment as the pipeline's analyzer."""

from ray import serve
from ray.exceptions import RayError

from framepipe.config import Settings
from framepipe.errors import ModelUnavailable
from framepipe.faces import load_face_model


@serve.deployment(name="FaceModel", ray_actor_options={"num_cpus": 1})  # the name serve/config.yaml and deploy/ use
class FaceModelDeployment:
    """The face models (:class:`framepipe.faces.FaceModel`), once per replica; frames from every caller are batched
    together."""

    def __init__(self):
        self.model = load_face_model(Settings())

    def info(self) -> dict:
        return {"device": self.model.device, "pack": self.model.pack}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def detect(self, images: list) -> list:
        """Each frame's faces, aligned (their crops travel back: 112x112, the recognizer's input) and scored."""
        return self.model.detect_batch(images)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed(self, crops: list) -> list:
        """The unit embedding of each aligned face (framepipe.tracking asked for it)."""
        return list(self.model.embed_crops(crops))

    def analyze_photo(self, image) -> list:
        """A one-frame input's faces (close-ups too: ``FaceModel.detect``), not batched: one picture a call."""
        return self.model.analyze(image, photo=True)


class HandleAnalyzer:
    """The FaceModel deployment as the pipeline's analyzer. Called from a worker thread: a batch of frames goes out as
    concurrent calls, which ``@serve.batch`` groups with other jobs' frames."""

    def __init__(self, handle, info: dict, batch_size: int):
        self.handle, self.device, self.pack, self.batch_size = handle, info["device"], info["pack"], batch_size

    def analyze(self, images, photo: bool = False):
        if not photo:
            found = self.detect(images)
            self.embed([f for faces in found for f in faces])
            return found
        return self._each(self.handle.analyze_photo, images)

    def detect(self, images):
        return self._each(self.handle.detect, images)

    def embed(self, faces) -> None:
        for face, embedding in zip(faces, self._each(self.handle.embed, [f.crop for f in faces])):
            face.embedding, face.crop = embedding, None

    @staticmethod
    def _each(method, items) -> list:
        try:
            responses = [method.remote(item) for item in items]
            return [r.result() for r in responses]
        except RayError as e:  # the model replica died or restarts: the job is run again once it is back
            raise ModelUnavailable(f"the model deployment failed: {type(e).__name__}") from None
