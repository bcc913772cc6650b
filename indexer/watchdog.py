"""Process liveness, for the helpers of a process that can be killed without cleanup (SIGKILL, OOM).

Worker processes (the build's, the service's face detection) block on a pipe from their parent;
if the parent dies without shutting them down they would wait forever, holding memory. Each one
starts :func:`start` in its initialiser and exits when the parent is gone. Writers hold
:func:`lock_dir` on the directory they fill, so that the next writer can tell a running writer's
directory (locked) from one a killed writer left (the kernel dropped its lock), even across pid
namespaces (containers sharing a volume) where a pid says nothing.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from pathlib import Path


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
    threading.Thread(
        target=_exit_when_gone, args=(pid or os.getppid(), every), name="facemem-watchdog", daemon=True
    ).start()


class Busy(OSError):
    """Another live process holds the directory's lock."""


def lock_dir(path: Path) -> int | None:
    """Take an exclusive advisory lock on directory ``path`` and return its fd (close it to release;
    the kernel releases it when the process dies, however it dies). Raises :class:`Busy` if another
    process holds it; returns None where the filesystem has no ``flock`` (the pid check remains)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise Busy(e.errno, "in use by another running process", str(path)) from None
        return None
    return fd


def unlock_dir(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def dir_in_use(path: Path, pid: int) -> bool:
    """Whether a live writer is filling ``path``, a directory named after its writer's ``pid``:
    its lock is held, or, where the lock cannot tell (not taken yet, or no ``flock``), ``pid`` runs."""
    try:
        fd = lock_dir(path)
    except Busy:
        return True
    except OSError:  # gone, or not a directory
        return False
    unlock_dir(fd)
    # Unlocked: a writer killed before it took the lock, or no flock here; the pid decides.
    return pid != os.getpid() and alive(pid)
