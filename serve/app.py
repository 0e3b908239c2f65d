"""Ray Serve application: one video per request over HTTP, durable jobs, results on a Standard Webhook.

Three deployments, split by resource profile, one module each (the service's settings and request models in
``serve/settings.py``, the job store and leases in ``serve/lifecycle.py`` and ``serve/stores.py``):

* ``VideoIngress`` (``serve/ingress.py``; FastAPI, CPU, light): authenticates (before reading a body), validates, refuses what would reach
  private addresses, pushes back (429 + ``Retry-After`` beyond ``FRAMEPIPE_SERVE_QUEUE_MAX`` queued jobs), honours
  ``Idempotency-Key``, stores the job and puts it on the broker before answering 202; answers status from the store
  (any replica can). Its blocking calls run on its own small thread pool, never on the event loop.
* ``VideoWorker`` (``serve/worker.py``; CPU): a Ray Serve task consumer (Celery on the broker, ``serve/lifecycle.py``) running at most
  ``max_ongoing_requests`` jobs at once: framepipe's per-video pipeline (``pipeline.process_video``) with
  :class:`HandleAnalyzer`, a cooperative timeout, then the webhook. A job holds a lease its worker renews: a job
  whose worker dies is taken back by the ingress's sweeper and finishes (same outputs, same webhook id).
* ``FaceModel`` (``serve/model.py``; GPU where there is one): holds the models once and batches frames across all jobs with
  ``@serve.batch``.

Run it with ``serve run serve/config.yaml`` (or ``serve deploy``); settings come from the environment
(``FRAMEPIPE_SERVE_*``: :class:`ServeSettings`, ``serve.lifecycle.QueueSettings``; the pipeline's ``FRAMEPIPE_*``).
"""

from serve.ingress import VideoIngress
from serve.model import FaceModelDeployment
from serve.worker import VideoWorker

_model = FaceModelDeployment.bind()
app = VideoIngress.bind(VideoWorker.bind(_model), _model)
