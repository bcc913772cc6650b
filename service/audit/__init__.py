"""The batch audit as a library: did a face generator invent its faces or copy the training set?

One call, for notebooks and scripts alike::

    from service.audit import audit
    res = audit(generator="dcgan32:../shared/data/generated/dcgan32_celeba/checkpoint_G.pth",
                index="build/celeba10k", n=1000, detector="aligned")
    res.data["support"]["semantic"]["estimate"]     # the numbers: the report's JSON, facemem-audit/3
    res.rows[:3]                                     # one dict per image (the CSV rows)
    res.to_html("report.html"); res.to_json("report.json"); res.to_csv("images.csv")

Exactly one source: ``generated=DIR`` (a folder), ``generator=SPEC`` (a PyTorch generator, fresh
samples per birthday trial; or a ``sampler(n, seed)`` callable) or ``images=[...]`` (paths, bytes,
uint8 arrays or (name, ...) pairs). A series of checkpoints of one training run: ``generator=[...]``
(specs, samplers or ``(step, spec)`` pairs) or a spec with a wildcard or commas
(``"dcgan32:runs/mem/step-*.pth"``): every checkpoint is audited, the last one's report is returned
with ``data["trend"]`` (:mod:`service.audit.trend`; the training-loop hook is :mod:`service.audit.hook`);
exactly one target: ``index=PATH`` (loaded in this process) or ``server=URL`` (a running facemem
service, with ``token=``). The other options and their defaults are in
:data:`service.audit.defaults.OPTIONS`. Both targets give identical numbers, except the distribution
distances, which need the training descriptors (``index=`` only).

Modules, one job each: ``sources`` (folders, generators, in-memory images), ``backends`` (in-process
or server), ``run`` (the passes: the requests and what they return), ``strangers`` (the null the
generated faces are compared with: training-domain or real strangers), ``analysis`` (the statistics
over the passes, and the report's data), ``views`` (the per-image grid, rows, pairs and histograms),
``defaults`` (every option), ``formats`` (numbers for people and JSON), ``report`` (the HTML, its
plots and thumbnails), ``simulate`` (worlds with known truth for validation), ``cli``
(``python scripts/audit.py``, ``facemem audit``). The statistics themselves are in
:mod:`service.stats` (support, baselines, C_T, identities, omissions, distribution, verdict, and the
training side, also served at ``GET /v1/reference``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["audit", "AuditResult"]


def _write_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


@dataclass
class AuditResult:
    """What :func:`audit` returns: the numbers (``data``, every image), per-image ``rows``, and the
    report. The files are bounded whatever n is (:mod:`service.audit.outputs`): the HTML and the JSON
    list per-image arrays up to :data:`service.audit.outputs.PER_IMAGE_LISTED` images and link the CSV,
    which has one row for every image."""

    data: dict
    thumbs: dict[str, str] = field(default_factory=dict, repr=False)
    plots: dict[str, str] = field(default_factory=dict, repr=False)
    csv_path: Path | None = field(default=None, repr=False)  # the CSV last written (the files link it)

    @property
    def rows(self) -> list[dict]:
        return self.data["rows"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def _csv_for(self, path: Path, csv: str | Path | bool) -> Path | None:
        """The CSV a report or JSON at ``path`` links: ``True`` the one written before, else a new one
        beside it (``<stem>.csv``); a path: that one (written now unless it was the last written);
        ``False``: none."""
        if csv is False:
            return None
        if csv is True:
            return self.csv_path or self.to_csv(path.with_suffix(".csv"))
        if self.csv_path is None or Path(csv).resolve() != self.csv_path.resolve():
            self.to_csv(csv)
        return self.csv_path

    def to_html(self, path: str | Path, csv: str | Path | bool = True) -> Path:
        """The self-contained HTML report (opens offline; the JSON block at its end holds the bounded
        ``data``, and a link to the per-image CSV: see :meth:`_csv_for` for ``csv``)."""
        from .outputs import bounded, relative
        from .report.html import render

        path = Path(path)
        link = relative(self._csv_for(path, csv), path)
        return _write_atomic(path, render(bounded(self.data, link), self.thumbs, self.plots))

    def to_json(self, path: str | Path, csv: str | Path | bool = True) -> Path:
        """The bounded ``data`` as strict JSON (NaN → null): the same dict as the report's embedded
        block; per-image arrays beyond the cap are in the CSV it names (``per_image.csv``)."""
        from .formats import json_safe
        from .outputs import bounded, relative

        path = Path(path)
        data = bounded(self.data, relative(self._csv_for(path, csv), path))
        return _write_atomic(path, json.dumps(json_safe(data), allow_nan=False, indent=1) + "\n")

    def to_csv(self, path: str | Path) -> Path:
        """One row per audited image (every one): status, top-1 semantic and pixel neighbours, the flags."""
        from .outputs import write_csv

        self.csv_path = write_csv(self.rows, path)
        return self.csv_path

    def summary_line(self) -> str:
        """One line for a terminal."""
        from .formats import fmt, pct, support_words

        d = self.data
        s, sup = d["summary"], (d["support"] or {}).get("semantic")
        ref = (d["support_reference"] or {}).get("semantic")
        same = d["memorization"]["same_person"] or {}
        return (
            f"{s['images']} images, {s['faces']} faces: {s['verdict']}; same person {pct(same.get('share'))}; "
            f"support {support_words(sup)} vs training data {support_words(ref)}; "
            f"C_T {fmt((d.get('ct_test') or {}).get('statistic'))}"
            + (_trend_words(d["trend"]) if d.get("trend") else "")
        )


def _trend_words(trend: dict) -> str:
    """The series' outcome in a few words, for the summary line."""
    n, first = len(trend["checkpoints"]), trend.get("first_detected")
    where = f"first detected at step {first['step']}" if first else "not detected at any"
    return f"; {n} checkpoints: memorization {where} (fixed sequence, alpha {trend['alpha']:g})"


def audit(
    *,
    generated: str | Path | None = None,
    generator: str | Any | None = None,
    images: list | None = None,
    index: str | Path | None = None,
    server: str | None = None,
    token: str | None = None,
    command: str = "",
    **options: Any,
) -> AuditResult:
    """Audit one source against one index or server; see the module docstring. Raises
    :class:`service.audit.backends.AuditError` (with an exit code) or
    :class:`service.audit.sources.SourceError` for anything the caller can fix."""
    from .backends import EXIT_USAGE, AuditError, LocalBackend, ServerBackend
    from .run import request_params

    opts = _resolve_options(options)
    if sum(x is not None for x in (generated, generator, images)) != 1:
        raise AuditError(EXIT_USAGE, "give exactly one of generated=, generator= and images=")
    if (index is None) == (server is None):
        raise AuditError(EXIT_USAGE, "give exactly one of index= and server=")
    downscale = opts["reference_downscale"]
    if downscale is not None and (not opts["reference_real"] or int(downscale) < 8):
        raise AuditError(EXIT_USAGE, "reference_downscale needs reference_real and a size of at least 8 px")
    held = opts["held_out_identities"]
    if isinstance(held, (str, Path)):  # read now: a bad file fails before any sampling, not after
        from ..stats.split import SplitError, read_held_out

        try:
            if not read_held_out(held):
                raise SplitError(f"the held-out identities file {held} lists no identity")
        except SplitError as e:
            raise AuditError(EXIT_USAGE, str(e)) from e
    params = request_params(opts)  # once: every request and the training side derive from it
    series = _series(generator)
    source = _open_source(generated, generator, images, opts["device"], opts["steps"]) if series is None else None
    backend = (
        LocalBackend(index, device=opts["device"], detect_processes=opts["detect_processes"])
        if index is not None
        else ServerBackend(server, token)
    )
    try:
        if series is None:
            return _report(opts, params, source, backend, command)
        return _report_series(series, opts, params, backend, command)
    finally:
        backend.close()


def _series(generator: Any) -> list | None:
    """The checkpoints when ``generator`` is a series (a list, or a spec with a wildcard or a comma),
    else None."""
    from .trend import checkpoints, is_series

    return checkpoints(generator) if is_series(generator) else None


def _report_series(series: list, opts: dict, params: Any, backend: Any, command: str) -> AuditResult:
    """Every checkpoint against the one backend, the training side and the real reference computed
    once (:class:`service.audit.run.Shared`); the last checkpoint's full report with ``data["trend"]``."""
    import time

    from .report.trend import trend_figures
    from .run import Shared
    from .trend import run_series

    shared = Shared()
    t0 = time.perf_counter()
    # Every checkpoint loads once before any is audited (a bad one fails in seconds, not at the end) and
    # again at its turn: loading twice costs seconds, holding every checkpoint at once could cost gigabytes.
    for ck in series:
        _open_source(None, ck.spec, None, opts["device"], opts["steps"])

    def one(spec: Any, last: bool) -> AuditResult:
        source = _open_source(None, spec, None, opts["device"], opts["steps"])
        return _report(opts, params, source, backend, command, shared=shared, assets=last)

    res = run_series(series, one, opts["alpha"])
    trend = res.data["trend"]
    trend["computed_once"] = dict(shared.computed)
    trend["total_s"] = time.perf_counter() - t0
    res.plots.update(trend_figures(trend))
    return res


def _resolve_options(options: dict[str, Any]) -> dict[str, Any]:
    """The caller's options over :data:`service.audit.defaults.DEFAULTS` (None: the default)."""
    from .defaults import DEFAULTS

    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown audit option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    opts["batch_sizes"] = tuple(sorted({int(s) for s in opts["batch_sizes"]}))
    return opts


def _open_source(generated: Any, generator: Any, images: list | None, device: str, steps: int | None) -> Any:
    """The one source given: a folder, in-memory images, a sampler callable or a generator spec."""
    from .sources import FolderSource, GeneratorSource, ImagesSource, load_generator

    if generated is not None:
        return FolderSource.open(generated)
    if images is not None:
        return ImagesSource.of(list(images))
    if callable(generator):  # a sampler(n, seed) -> images, straight from a notebook
        return GeneratorSource(getattr(generator, "__name__", repr(generator)), generator)
    return load_generator(generator, device="cpu" if device == "auto" else device, steps=steps)


def _report(
    opts: dict, params: Any, source: Any, backend: Any, command: str, shared: Any = None, assets: bool = True
) -> AuditResult:
    """The passes, the statistics over what they returned, then the report's thumbnails and plots
    (``assets``; a series skips them for every checkpoint but the last). ``shared``: a series'
    :class:`service.audit.run.Shared`."""
    import time

    from .analysis import report_data
    from .report.assets import figures, thumbnails
    from .run import Audit

    t_all = time.perf_counter()
    passes = Audit(opts, params, source, backend, shared).run()
    generator = source.kind == "generator"
    provenance = {
        "command": command,
        "source": {
            "kind": source.kind,
            "describe": source.describe,
            "upscale": opts["upscale"] if generator else None,
            "sample_seeds": passes.sample_seeds or None,
            "sampling": getattr(getattr(source, "sampler", None), "sampling", None),
        },
        "backend": {"mode": backend.mode, "where": backend.where},
        "index": backend.info(),
    }
    t0 = time.perf_counter()
    data = report_data(passes, opts, provenance)
    timing = passes.timing | {"statistics_s": time.perf_counter() - t0}
    timing["statistics_stages"] = data.pop("statistics_stages")
    thumbs: dict[str, str] = {}
    plots: dict[str, str] = {}
    if assets:
        t0 = time.perf_counter()
        thumbs = thumbnails(data, source, backend, passes.images, opts["progress"])
        plots = figures(data, passes.training)
        timing["thumbnails_plots_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_all
    data["timing"] = timing
    return AuditResult(data, thumbs, plots)
