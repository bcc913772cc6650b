"""Progress bars that draw only on a terminal.

Why: a tqdm bar redraws itself many times a second; written to a log file or a CI job's output it
becomes thousands of lines of carriage returns. Every progress bar in facemem comes from
:func:`progress_bar`, which draws when asked to *and* when its stream is a terminal.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm


def is_terminal(stream: IO | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed streams)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar(*, enabled: bool = True, file: IO | None = None, **kw: Any) -> tqdm:
    """A ``tqdm`` on ``file`` (default stderr), disabled unless ``enabled`` and ``file`` is a terminal.

    Keyword arguments go to tqdm (``total``, ``initial``, ``unit``, ``desc``, ...). A disabled bar
    still accepts ``update``/``close``, so callers need no branches.
    """
    stream = sys.stderr if file is None else file
    kw.setdefault("dynamic_ncols", True)
    return tqdm(file=stream, disable=not (enabled and is_terminal(stream)), **kw)
