"""Process liveness, for the helpers of a process that can be killed without cleanup (SIGKILL, OOM).

Worker processes (the build's, the service's face detection) block on a pipe from their parent;
if the parent dies without shutting them down they would wait forever, holding memory. Each one
starts :func:`start` in its initialiser and exits when the parent is gone. The store uses
:func:`alive` to tell a running writer's temp directory from a killed one's.
"""

from __future__ import annotations

import os
import threading
import time


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, or a pid taken by another user, is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid now belongs to another user's process: ours is gone
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): kill(pid, 0) is all we have


def _exit_when_gone(pid: int, every: float) -> None:
    while alive(pid):
        time.sleep(every)
    os._exit(1)


def start(pid: int | None = None, every: float = 1.0) -> None:
    """Exit this process (at once, no cleanup) when ``pid`` (default: the parent) is gone."""
    threading.Thread(target=_exit_when_gone, args=(pid or os.getppid(), every), name="facemem-watchdog",
                     daemon=True).start()
