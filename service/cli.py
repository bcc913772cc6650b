"""The ``facemem`` command: one entry point over the modules' own command lines.

``facemem index build|info ...`` is ``python -m indexer build|info ...`` and ``facemem serve ...`` is
``python -m service ...``: each subcommand forwards the rest of the command line unchanged to a
``main(argv) -> int`` function, so the options, help and exit codes are those of the module and
cannot drift apart. A new subcommand is one line in :data:`COMMANDS`.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version

# subcommand -> (module whose main(argv) runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("indexer.__main__", "build or describe a face index (= python -m indexer build|info)"),
    "serve": ("service.__main__", "serve an index over HTTP (= python -m service)"),
    "audit": ("service.audit.cli", "audit a generator or a folder of generated faces (= python scripts/audit.py)"),
}


def version() -> str:
    """The installed distribution's version; the source tree's when run from a checkout."""
    try:
        return dist_version("facemem")
    except PackageNotFoundError:
        from service import __version__

        return __version__


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: facemem [--version] [--help] COMMAND [ARGS...]",
        "",
        "facemem: semantic and pixel nearest-neighbour search of generated faces against a training set.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()),
        "",
        "`facemem COMMAND --help` lists a command's options.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        print(usage(), file=sys.stderr)
        return 2
    cmd, rest = args[0], args[1:]
    if cmd in ("-h", "--help", "help"):
        print(usage())
        return 0
    if cmd in ("-V", "--version"):
        print(f"facemem {version()}")
        return 0
    if cmd not in COMMANDS:
        print(f"facemem: unknown command {cmd!r}; choose from {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
