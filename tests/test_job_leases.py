"""The job store's leases (serve/lifecycle.py), on both stores: the embedded SQLite one and a real Redis. A job is taken
by one live worker at a time, renewed while it works, taken back when its worker dies (queued again, or failed past
its attempts), and a sweep acts on each lapsed job once however many sweepers run."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = []  # the fast layer: neither the models nor ../shared


class Clock:
    """The stores' time, moved by the test: no test sleeps against a lease."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    from serve import stores

    if request.param == "sqlite":
        return stores.SqliteStore(str(tmp_path / "jobs.sqlite"), clock=Clock())
    return stores.RedisStore(request.getfixturevalue("redis_server"), prefix=f"test:{time.time_ns()}:", clock=Clock())


def _job(store, n: int = 0):
    from serve.lifecycle import JobStatus

    job = JobStatus(job_id=f"{n:032x}", status="queued", source="s3://b/k.mp4", submitted_at=store.clock())
    store.create(job, None)
    return job.job_id


def test_one_live_worker_holds_a_job(store):
    job_id = _job(store)
    assert store.position(job_id) == 1
    a = store.claim(job_id, "worker-a", lease_s=30)
    assert a.status == "running" and a.attempts == 1 and store.position(job_id) is None
    assert store.claim(job_id, "worker-b", lease_s=30) is None  # a duplicate delivery while a lives
    assert store.claim(job_id, "worker-a", lease_s=30).attempts == 2  # the holder may take it again
    assert store.lapsed(store.clock()) == []
    assert store.reclaim(job_id, store.clock(), max_attempts=3) is None  # live: nobody takes it back


def test_a_renewed_lease_never_lapses_and_a_dead_workers_does(store):
    job_id = _job(store)
    store.claim(job_id, "worker-a", lease_s=2)
    for _ in range(3):  # the heartbeat, for longer than one lease
        store.clock.advance(1.5)
        assert store.lapsed(store.clock()) == []
        store.renew("worker-a", [job_id], lease_s=2)
    store.renew("worker-b", [job_id], lease_s=100)  # someone else's renewal changes nothing
    assert store.lapsed(store.clock() + 1.9) == []
    assert store.reclaim(job_id, store.clock() + 1.9, max_attempts=3) is None  # still live
    store.clock.advance(2.5)  # its worker died: no more renewals
    assert job_id in store.lapsed(store.clock())
    back = store.reclaim(job_id, store.clock(), max_attempts=3)
    assert back.status == "queued" and store.position(job_id) == 1 and store.lapsed(store.clock() + 10) == []
    assert store.claim(job_id, "worker-b", lease_s=30).attempts == 2


def test_past_its_attempts_a_job_fails_and_a_finished_job_holds_no_lease(store):
    job_id = _job(store)
    for attempt in range(1, 4):
        assert store.claim(job_id, f"worker-{attempt}", lease_s=1).attempts == attempt
        store.clock.advance(2)
        back = store.reclaim(job_id, store.clock(), max_attempts=3)
    assert back.status == "failed" and back.attempts == 3
    other = _job(store, 1)
    job = store.claim(other, "worker-a", lease_s=1)
    job.status = "succeeded"
    store.save(job)
    store.clock.advance(2)
    assert store.lapsed(store.clock()) == [] and store.claim(other, "worker-b", 30).status == "succeeded"


def test_concurrent_sweepers_take_each_lapsed_job_back_once(store):
    from serve import lifecycle

    ids = [_job(store, n) for n in range(6)]
    for job_id in ids:
        store.claim(job_id, "dead-worker", lease_s=1)
    store.clock.advance(2)
    enqueued, lost, counts = [], [], []
    lock = threading.Lock()

    def sweeper():
        counts.append(lifecycle.sweep(store, 3, lambda j: (lock.acquire(), enqueued.append(j), lock.release()),
                                 lost.append))

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(enqueued) == sorted(ids) and not lost  # each once, whichever sweeper got it
    assert sum(counts) == len(ids)  # what the sweepers say they took back: each job once
    assert store.queued() == 6


def test_a_queued_job_no_message_names_goes_on_the_broker_again(store, tmp_path):
    """The embedded broker forgets a task once a worker reads it: a job read by a worker killed before its claim
    is queued with no lease. The sweep puts it on the broker again after two sweeps without a message naming it,
    never a job whose message is there or that a worker took meanwhile; the real queue folder is read."""
    import json

    from serve import lifecycle

    held, lost, taken = _job(store, 1), _job(store, 2), _job(store, 3)
    q = lifecycle.QueueSettings(state_dir=str(tmp_path / "state"))
    folder = tmp_path / "state" / "broker" / "queue"
    folder.mkdir(parents=True)
    (folder / "1.msg").write_text(json.dumps({"headers": {"argsrepr": f"['{held}']"}, "body": "e30="}))
    enqueued: list[str] = []
    suspects = lifecycle.requeue_forgotten(store, lifecycle.embedded_holds(q), enqueued.append, set())
    assert enqueued == [] and suspects == {lost, taken}  # once missing may be a worker about to claim
    store.claim(taken, "worker-a", lease_s=30)
    suspects = lifecycle.requeue_forgotten(store, lifecycle.embedded_holds(q), enqueued.append, suspects)
    assert enqueued == [lost]
