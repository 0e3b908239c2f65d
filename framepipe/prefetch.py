"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

Used to decode frames while the models run: decord, PyAV, OpenCV and onnxruntime release the GIL in their
native code, so on two cores decoding and inference overlap.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


@contextlib.contextmanager
def prefetch(*sources: Iterable[T], depth: int = 4) -> Iterator[Iterator[T]]:
    """``with prefetch(a, b) as items: for x in items: ...``: each source runs in its own thread and their items
    arrive interleaved. Errors of a producer are raised in the consumer; leaving the block early stops the
    producers and waits for them. Each source that is a generator is closed in its own thread, so its ``finally``
    (closing a decoder, say) never runs while another thread is inside it."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(items: Iterable[T]) -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # handed to the consumer
            put(_Failure(e))
        finally:
            # A generator's own clean-up (closing its decoder) runs here, in the thread that used it: never from
            # another thread while this one may still be inside the decoder.
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - reported to the consumer like any producer error
                    put(_Failure(e))
            put(_END)

    threads = [
        threading.Thread(target=produce, args=(src,), name=f"framepipe-prefetch-{i}", daemon=True)
        for i, src in enumerate(sources)
    ]
    for thread in threads:
        thread.start()

    def consume() -> Iterator[T]:
        running = len(threads)
        while running:
            item = q.get()
            if item is _END:
                running -= 1
                continue
            if isinstance(item, _Failure):
                raise item.error
            yield item

    try:
        yield consume()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
