"""Audit a face generator for memorization against a facemem index: HTML report, JSON numbers, CSV rows.

    python scripts/audit.py (--generated DIR | --generator SPEC) (--index INDEX | --server URL [--token T])
                            [--out report.html] [--json numbers.json] [--csv images.csv] [options]

A thin command line over the audit library (:func:`service.audit.audit`; ``facemem audit`` is the
same command). ``--help`` lists every option with its default.
"""

from __future__ import annotations

import sys

from service.audit.cli import main

if __name__ == "__main__":
    sys.exit(main())
