"""What a backfill survives, said in one place, and what it reports of it (``jobs/backfill.py`` prints the report in
its summary's ``faults``).

**The settings** (what the run relies on; ``tests/test_units.py`` fails when a Ray upgrade changes any of them):

* ``RAY_DATA_RETRIES``: Ray Data's own, which Ray 2.60 no longer lets a job set per stage (its ``ray_remote_args``
  are deprecated): a listing or decode task lost with its worker or node is run again without limit, a model actor
  is restarted without limit (it holds only the models, no video's state between calls) wherever its resources
  are, and its calls in flight are re-run on it without limit. Without limit is right for a lost node: until the
  cluster notices a node's death, a call to its actor fails at once with ``ActorUnavailableError``, and a finite
  number of retries (4, measured) was spent within a second, dropping those calls' blocks. Finish tasks are Ray
  Core tasks of the driver: ``FINISH_RETRIES`` by Ray, then the driver's own tries.
* ``MOST_ATTEMPTS``: the bound, per video, on all of these: an input that crashes its worker every time (a poison
  pill) would otherwise hold the run forever. The stage that starts a video's work for the fourth time without any
  earlier start having ended records the video failed (``worker_lost``, final: marked done, not retried by later
  runs) instead of running it again.
* ``--max-errored-blocks`` (``DEFAULT_ERRORED_BLOCKS``): the error budget. A block whose task failed beyond its
  retries is dropped and the run goes on, up to this many; one more aborts the run (Ray Data's default, 0, aborts a
  bucket on its first). A run that dropped any block ends with exit code 3 and names the inputs it lost; they have
  no done marker, so the next run takes them again.

**The report**: the driver keeps one small actor, :class:`Attempts`, on its own node. Every stage tells it when
it starts and ends a piece of work (a decode task's video, a model call's frames, a video call, a finish task):
work started again while an earlier start never ended was retried (its first attempt died with its worker or
node); work started and never ended when the run is over was lost. Its memory holds the work in flight only. The
driver adds the nodes it saw leave the cluster during the run (``ray.nodes()``, sampled), the actors that Ray
restarted, and the blocks Ray Data dropped.

**Failpoints** (tests only, :func:`failpoint`): ``FRAMEPIPE_FAILPOINT`` in a node's environment hangs a stage
(``decode``, ``analysis``, ``finish``) so that a test can kill the node at that moment, or crashes the worker on one
input (tests/test_cluster.py, tests/test_backfill.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter

# Ray Data's retries (-1: without limit) for its tasks, its actors' restarts and their calls: relied on, checked
RAY_DATA_RETRIES = {"max_retries": -1, "max_restarts": -1, "max_task_retries": -1}
MOST_ATTEMPTS = 3  # starts of one video's work that never ended: the next start records it failed (worker_lost)
FINISH_RETRIES = 5
DEFAULT_ERRORED_BLOCKS = 10
LOST_EXIT_CODE = 3  # the run finished, but dropped blocks lost some inputs (named in the summary): run it again

FAILPOINT_ENV = "FRAMEPIPE_FAILPOINT"
MOST_NAMED = 20  # lost inputs named in the summary (all are counted)


class Attempts:
    """Work started and ended, by kind (``decode``, ``analysis``, ``video``, ``finish``): run as a Ray actor pinned
    to the driver's node (:func:`start_attempts`)."""

    def __init__(self):
        self.open: dict[tuple[str, str], tuple[str, int]] = {}  # (kind, key) -> (video id, starts), in flight
        self.retried: Counter = Counter()
        self.retried_videos: set[str] = set()
        self.restarted: Counter = Counter()

    def started(self, kind: str, key: str, video: str) -> int:
        """The work's attempt number (1: its first start)."""
        _, starts = self.open.get((kind, key), (video, 0))
        if starts:  # its earlier attempt never ended: it died with its worker or node
            self.retried[kind] += 1
            self.retried_videos.add(video)
        self.open[(kind, key)] = (video, starts + 1)
        return starts + 1

    def ended(self, kind: str, key: str) -> None:
        self.open.pop((kind, key), None)

    def actor_restarted(self, kind: str) -> None:
        self.restarted[kind] += 1

    def report(self) -> dict:
        lost = sorted({v for v, _ in self.open.values()})
        return {"tasks_retried": dict(self.retried), "videos_retried": len(self.retried_videos),
                "actors_restarted": dict(self.restarted), "unfinished": lost}


def start_attempts():
    """The :class:`Attempts` actor of this run, on this (the driver's) node: it outlives any worker node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ray.remote(Attempts).options(
        num_cpus=0, max_restarts=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()


def started(attempts, kind: str, key: str, video: str) -> int:
    """Tell the run's :class:`Attempts` that this work starts; its attempt number (1 where nobody knows: the
    report is never worth failing a video for)."""
    if attempts is None:
        return 1
    try:
        import ray

        return int(ray.get(attempts.started.remote(kind, key, video), timeout=30))
    except Exception:  # noqa: BLE001
        return 1


def ended(attempts, kind: str, key: str) -> None:
    """Tell the run's :class:`Attempts` that this work ended (fire and forget)."""
    if attempts is None:
        return
    try:
        attempts.ended.remote(kind, key)
    except Exception:  # noqa: BLE001 - a statistic
        pass


def worker_lost(attempt: int) -> str:
    """The failure message of a video whose work started ``attempt`` times."""
    return (f"its worker was lost {attempt - 1} times while it ran (a node lost each time, or an input that crashes "
            f"its worker): not tried again")


def note_actor(attempts, kind: str) -> None:
    """An actor's constructor: tells :class:`Attempts` when Ray restarted it (lost with its node or worker)."""
    if attempts is None:
        return
    try:
        import ray

        if ray.get_runtime_context().was_current_actor_reconstructed:
            attempts.actor_restarted.remote(kind)
    except Exception:  # noqa: BLE001
        pass


class ErroredBlocks(logging.Handler):
    """Counts the blocks Ray Data dropped under the error budget (it says so in its log, once per block)."""

    LOGGER = "ray.data._internal.execution.streaming_executor_state"
    SAYS = "Ignoring this exception with remaining max_errored_blocks"

    def __init__(self):
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.SAYS in record.getMessage():
                self.count += 1
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "ErroredBlocks":
        logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)


class Nodes:
    """The cluster's nodes seen alive during the run; ``lost``: those no longer alive (sampled by the driver)."""

    EVERY_S = 2.0

    def __init__(self):
        self.seen: set[str] = set()
        self.dead: set[str] = set()
        self._at = 0.0
        self.sample(force=True)
        self.initial = len(self.seen)

    def sample(self, force: bool = False) -> None:
        if not force and time.perf_counter() - self._at < self.EVERY_S:
            return
        self._at = time.perf_counter()
        import ray

        try:
            for n in ray.nodes():
                (self.seen if n.get("Alive") else self.dead).add(n["NodeID"])
        except Exception:  # noqa: BLE001 - a statistic
            return

    @property
    def lost(self) -> int:
        return len(self.seen & self.dead)

    @property
    def joined(self) -> int:
        return len(self.seen) - self.initial


def failpoint(stage: str, video: str = "") -> None:
    """Tests' fault injection, from this node's environment (``FAILPOINT_ENV``): ``<stage>:hang:<file>`` writes the
    node's id to ``<file>`` and hangs here (a test kills the node at this moment); ``<stage>:crash:<text>`` ends
    this worker process outright when the video's id holds ``<text>`` (an input that crashes its worker)."""
    spec = os.environ.get(FAILPOINT_ENV, "")
    name, action, arg = (spec.split(":", 2) + ["", ""])[:3]
    if name != stage or not arg:
        return
    if action == "crash" and arg in video:
        os._exit(70)
    if action == "hang":
        try:
            import ray

            node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001
            node = ""
        with open(arg, "a") as f:
            f.write(f"{stage} {node}\n")
        time.sleep(3600)
