"""Stops the local Ray that a backfill driver started, when the driver dies without stopping it.

``ray.init()`` on a machine with no cluster starts a local Ray (GCS, raylet, agents, workers) that the driver stops
on a normal exit. A driver killed outright (SIGKILL, the OOM killer) leaves the dashboard agent, the runtime-env
agent and idle workers running (about 300 MB). The backfill starts this watchdog, in a session of its own, next to
such a driver: it notes the driver's descendants twice a second and, once the driver is gone, terminates those
still running (then kills what is left after 5 s).

    python -m jobs.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5


def gone(p: psutil.Process) -> bool:
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def watch(pid: int) -> list[psutil.Process]:
    """Wait for ``pid`` to end; return its descendants as last seen alive."""
    driver = psutil.Process(pid)
    known: dict[int, psutil.Process] = {}
    me = os.getpid()  # a child of the driver too
    while not gone(driver):
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    return [p for p in known.values() if not gone(p)]


def stop(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def start(driver_pid: int) -> subprocess.Popen:
    """Run the watchdog for ``driver_pid`` in its own session (a signal to the driver's group does not reach it)."""
    return subprocess.Popen([sys.executable, "-m", "jobs.reaper", str(driver_pid)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    stop(watch(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
