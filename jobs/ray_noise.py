"""Ray's own false alarms, kept off the backfill driver's stderr.

Every Ray Data actor pool of Ray 2.60 makes the driver's core worker log, at ERROR level, "Actor ... has constructor
arguments in the object store and max_restarts > 0 ... the actor restart will fail" (ray-project/ray#57733, open):
Ray Data passes its actors their function and context by reference, and the core warns about any such actor that
may be restarted (ray-project/ray#53727). For this job it is a false alarm: those objects are owned by the driver and
live in its node's object store, so they are lost only with the driver, and the job with them; a model actor lost
with its node is restarted by Ray from them as Ray Data intends (restarts must stay on: Ray Data replaces no dead
actor itself). The line comes from C++ straight to file descriptor 2, so it is filtered there: that one message,
nothing else. Remove this module when the pinned Ray no longer prints it (tests/test_backfill.py asserts a quiet
run).
"""

from __future__ import annotations

import contextlib
import os
import threading

KNOWN = (b"has constructor arguments in the object store and max_restarts > 0",)  # ray-project/ray#57733


@contextlib.contextmanager
def filtered_stderr():
    """File descriptor 2 through a pipe whose lines reach the real stderr unless they hold a KNOWN message."""
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with os.fdopen(read, "rb", buffering=0) as lines:
            pending = b""
            while chunk := lines.read(65536):
                pending += chunk
                *whole, pending = pending.split(b"\n")
                out = b"".join(ln + b"\n" for ln in whole if not any(k in ln for k in KNOWN))
                if out:
                    os.write(real, out)
            if pending and not any(k in pending for k in KNOWN):
                os.write(real, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        os.dup2(real, 2)  # the pipe's last writer gone (child processes aside): the pump reads to its end
        thread.join(timeout=5)
        os.close(real)
