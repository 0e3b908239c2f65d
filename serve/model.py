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
    async def analyze(self, images: list) -> list:
        return self.model.analyze_batch(images)

    def analyze_photo(self, image) -> list:
        """A one-frame input's faces (close-ups too: ``FaceModel.detect``), not batched: one picture a call."""
        return self.model.analyze(image, photo=True)


class HandleAnalyzer:
    """The FaceModel deployment as the pipeline's analyzer. Called from a worker thread: a batch of frames goes out as
    concurrent calls, which ``@serve.batch`` groups with other jobs' frames."""

    def __init__(self, handle, info: dict, batch_size: int):
        self.handle, self.device, self.pack, self.batch_size = handle, info["device"], info["pack"], batch_size

    def analyze(self, images, photo: bool = False):
        try:
            method = self.handle.analyze_photo if photo else self.handle.analyze
            responses = [method.remote(image) for image in images]
            return [r.result() for r in responses]
        except RayError as e:  # the model replica died or restarts: the job is run again once it is back
            raise ModelUnavailable(f"the model deployment failed: {type(e).__name__}") from None
