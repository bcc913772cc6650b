"""The audit's passes: the requests to a backend, and nothing computed from their answers.

Data flow: source → requests to a backend (``POST /neighbors`` with ``vectors=1``, in chunks) →
per-image entries plus descriptors and pixel crops (:class:`Answers`) → :class:`Passes`, which
:mod:`service.audit.analysis` turns into the report's numbers.

Passes:

* the main sample (``n`` images, a seeded subset of a folder, or generator samples);
* generator only: ``trials`` fresh batches per birthday batch size s, each embedded in chunks;
* with ``reference_real``: real faces of people not in the index, through the same detector;
* the training side (``GET /v1/reference``, :func:`service.stats.training_side.training_side`).

Every request carries the same :class:`service.params.Params`, resolved once from the options
(:func:`request_params`), and asks for ``attributes=1`` too: the omission statistics
(:mod:`service.stats.omissions`) read each face's attribute probabilities and geometry from the
entries. In-process and server audits post the same chunks, so they get identical answers; each pass
hands the backend its requests as one stream (:meth:`Audit.post`), and the in-process backend
detects and embeds the next ones in its workers while it answers the current one.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer import pixels

from ..params import ApiError, Params, parse_params
from ..stats import support
from .backends import EXIT_SERVER, EXIT_USAGE, AuditError
from .defaults import GENERATOR_N
from .progress import stage_bar

log = logging.getLogger(__name__)


def sub_seed(seed: int, *path: int) -> int:
    """Independent, reproducible seeds for the main sample, each chunk and each trial."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def request_params(options: dict) -> Params:
    """The one :class:`Params` every request of the audit carries, from the audit's options; the
    service's own validation decides (which threshold wins is :func:`service.stats.thresholds.calibrate`'s
    rule, not the audit's)."""
    query: dict[str, Any] = {"k": options["k"], "detector": options["detector"], "vectors": True, "attributes": 1}
    for name in ("threshold", "false_match_rate", "pair_false_match_rate"):
        if options.get(name) is not None:
            query[name] = float(options[name])
    if options.get("resolution_match") is not None:
        query["resolution_match"] = bool(options["resolution_match"])
    try:
        return parse_params(query)
    except ApiError as e:
        raise AuditError(EXIT_USAGE, e.message) from None


def stream(backend: Any, requests: Iterator[tuple[list, Params]]) -> Iterator[dict]:
    """The backend's answers to ``requests``, in order: its own ``stream`` (the in-process backend
    works ahead), else one ``neighbors`` call per request."""
    if hasattr(backend, "stream"):
        yield from backend.stream(requests)
        return
    for images, params in requests:
        yield backend.neighbors(images, params)


def wire_vectors(entry: dict) -> dict:
    """One answer's entry with its vectors in the service's JSON forms (what the reference cache keeps)."""
    e = dict(entry)
    if isinstance(e.get("descriptor"), np.ndarray):
        e["descriptor"] = [float(v) for v in e["descriptor"]]
    if isinstance(e.get("pixels"), np.ndarray):
        e["pixels"] = base64.b64encode(np.ascontiguousarray(e["pixels"]).tobytes()).decode("ascii")
    return e


@dataclass
class Answers:
    """What came back for one set of images: the per-image entries (vectors removed) and the vectors
    of the ok faces, in entry order."""

    entries: list[dict] = field(default_factory=list)
    desc: list[np.ndarray] = field(default_factory=list)
    pix: list[np.ndarray] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)  # entry position of each ok face

    def add(self, body: dict) -> None:
        """Take one answer's entries; vectors come as the service's JSON forms (a list of floats,
        base64) or, from the in-process backend, as the arrays they stand for (the same values)."""
        for e in body["images"]:
            d, p = e.pop("descriptor", None), e.pop("pixels", None)
            if e["status"] == "ok":
                if d is None or p is None:
                    raise AuditError(EXIT_SERVER, "the service returned no vectors (is it an older facemem?)")
                self.ok.append(len(self.entries))
                self.desc.append(np.asarray(d, np.float32))
                self.pix.append(p if isinstance(p, np.ndarray) else np.frombuffer(base64.b64decode(p), np.uint8))
            self.entries.append(e)

    @property
    def ok_entries(self) -> list[dict]:
        return [self.entries[i] for i in self.ok]

    @property
    def descriptors(self) -> np.ndarray:
        return np.stack(self.desc) if self.desc else np.zeros((0, 128), np.float32)

    @property
    def pixels(self) -> np.ndarray:
        return np.stack(self.pix) if self.pix else np.zeros((0, pixels.PIXEL_DIM), np.uint8)

    def top1_distances(self, channel: str) -> np.ndarray:
        """Each ok face's distance to its nearest training face in ``channel``."""
        return np.array([self.entries[i][channel][0]["distance"] for i in self.ok], np.float64)


@dataclass
class Trial:
    """One birthday trial (generator only): a fresh batch of ``s`` samples from ``seed``."""

    s: int
    trial: int
    seed: int
    answers: Answers


@dataclass
class Passes:
    """Everything the backend answered for one audit: what :mod:`service.audit.analysis` reads."""

    main: Answers
    trials: list[Trial]
    reference: Answers | None  # --reference-real's faces, when given
    training: dict  # the training side (GET /v1/reference)
    first: dict  # the first answer: its ``params`` and ``calibration`` hold for every request
    train_descriptors: np.ndarray | None  # in-process only: for the distribution distances
    images: list[tuple[str, Any]] = field(
        default_factory=list
    )  # generator: the main sample as generated, for thumbnails
    sample_seeds: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


@dataclass
class Shared:
    """What a series of audits against one backend computes once and reuses (checkpoints of one
    training run, :func:`service.audit.audit` with a list of generators): the training side and the
    real reference faces' answers. Why: neither depends on the generator; recomputing them per
    checkpoint would cost a k-means over the index, the training support draws and the reference pass
    each time. The training side is computed for the first checkpoint's face count and reused as is
    (its C_T cells and training-support sample size follow that count). ``computed`` counts how often
    each part was actually computed (a series' report shows it)."""

    training: dict | None = None
    reference: Answers | None = None
    computed: dict[str, int] = field(default_factory=lambda: {"training_side": 0, "reference_real": 0})


class Audit:
    """The passes of one audit of one source against one backend; :meth:`run` returns their :class:`Passes`."""

    # The chance-rate check, where tests knew it before the statistics left this class.
    _chance_rate_check = staticmethod(support.chance_rate_check)

    def __init__(self, options: dict, params: Params, source: Any, backend: Any, shared: Shared | None = None):
        self.options, self.params, self.source, self.backend = options, params, source, backend
        self.shared = shared if shared is not None else Shared()
        self.generator = source.kind == "generator"
        self.bar = None
        self.first: list[dict] = []  # the first answer, once there is one

    def chunk(self) -> int:
        limit = getattr(self.backend, "max_files", None)
        return min(self.options["chunk"], limit) if limit else self.options["chunk"]

    def post(self, jobs: list[tuple[Any, Answers]], params: Params | None = None, keep: list | None = None) -> None:
        """Every job's images, each job cut into requests of :meth:`chunk` images, into its
        :class:`Answers`; a job is (a loader returning [(name, image)], answers). The loaders are
        called as the backend asks for more requests (:meth:`stream`), so the in-process backend
        detects and embeds the next requests in its workers while it answers this one, and a server
        gets the same requests, in the same order, one at a time. Every answer must carry the same
        thresholds (one index). ``keep``: a list that receives each answer in the service's JSON form
        (before :meth:`Answers.add` takes its vectors)."""
        c = self.chunk()
        targets: deque[tuple[Answers, int]] = deque()

        def requests():
            for load, into in jobs:
                images = load()
                for s in range(0, len(images), c):
                    targets.append((into, len(images[s : s + c])))
                    yield images[s : s + c], params or self.params

        for body in stream(self.backend, requests()):
            into, n = targets.popleft()
            self.check_calibration(body)
            if keep is not None:
                keep.append({**body, "images": [wire_vectors(e) for e in body["images"]]})
            into.add(body)
            if self.bar is not None:
                self.bar.update(n)

    def check_calibration(self, body: dict) -> None:
        """The first answer's thresholds hold for every later one: one index throughout."""
        if not self.first:
            self.first.append(body)
        elif body["calibration"] != self.first[0]["calibration"]:
            raise AuditError(EXIT_SERVER, "the thresholds changed between requests (was the index replaced?)")

    def gen_sample(self, n: int, seed: int, prefix: str) -> list[tuple[str, np.ndarray]]:
        """Generator samples as arrays: the in-process backend hands them to the face pipeline as
        they are, a server backend sends their lossless PNGs."""
        return self.source.arrays(n, seed, prefix=prefix, upscale=self.options["upscale"])

    def main_plan(self, sample_seeds: list[dict]) -> tuple[int, list]:
        """(images, loaders of the main sample's chunks): loaded lazily, so a huge folder streams;
        a generator's loaders give its samples as generated (:meth:`main_pass` enlarges them), and its
        chunk seeds are appended to ``sample_seeds``."""
        options, src, c = self.options, self.source, self.chunk()
        if src.kind == "folder":
            total = len(src.files)
            n = total if options["n"] is None else min(options["n"], total)
            rng = np.random.default_rng(sub_seed(options["seed"], 0))
            picked = list(range(total)) if n == total else sorted(rng.choice(total, n, replace=False).tolist())
            return n, [lambda ix=picked[i : i + c]: src.read(ix) for i in range(0, n, c)]
        n = options["n"] or GENERATOR_N
        plan = []
        for ci, start in enumerate(range(0, n, c)):
            m, seed = min(c, n - start), sub_seed(options["seed"], 0, ci)
            sample_seeds.append({"n": m, "seed": seed, "prefix": f"sample{ci:03d}_"})
            plan.append(lambda m=m, seed=seed, ci=ci: src.raw(m, seed, f"sample{ci:03d}_"))
        return n, plan

    def run(self) -> Passes:
        options = self.options
        sample_seeds: list[dict] = []
        n_main, plan = self.main_plan(sample_seeds)
        ref_source = None
        if options.get("reference_real") and self.shared.reference is None:
            from .sources import FolderSource

            ref_source = FolderSource.open(options["reference_real"])
        n_trials = sum(options["batch_sizes"]) * options["trials"] if self.generator else 0
        total = n_main + n_trials + (len(ref_source.files) if ref_source else 0)
        self.bar = stage_bar(total=total, unit="img", desc="main sample", enabled=options["progress"])
        timing: dict[str, float] = {}
        try:
            t0 = time.perf_counter()
            main, images = self.main_pass(plan)
            timing["main_pass_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.bar.set_description("birthday trials")
            trials = self.trials() if self.generator else []
            timing["trials_s"] = time.perf_counter() - t0
            reference = self.shared.reference
            if ref_source is not None:
                t0 = time.perf_counter()
                self.bar.set_description("reference faces")
                reference = self.shared.reference = self.reference_pass(ref_source)
                self.shared.computed["reference_real"] += 1
                timing["reference_real_s"] = time.perf_counter() - t0
        finally:
            self.bar.close()
            self.bar = None
        t0 = time.perf_counter()
        training = self.training_side(len(main.ok))
        timing["training_side_s"] = time.perf_counter() - t0
        train_descriptors = self.backend.train_descriptors()
        return Passes(main, trials, reference, training, self.first[0], train_descriptors, images, sample_seeds, timing)

    def main_pass(self, plan: list) -> tuple[Answers, list[tuple[str, Any]]]:
        """The main sample, chunk by chunk; a generator's samples are kept as generated, before
        ``upscale`` (:func:`service.audit.sources.keepsake`), for the report's thumbnails."""
        from .sources import enlarge, keepsake

        main, images = Answers(), []

        def generated(load):
            raw = load()
            images.extend((name, keepsake(im)) for name, im in raw)
            return [(name, enlarge(im, self.options["upscale"])) for name, im in raw]

        self.post([((lambda load=load: generated(load)) if self.generator else load, main) for load in plan])
        if len({e["image"] for e in main.entries}) != len(main.entries):
            raise AuditError(EXIT_USAGE, "image names in the sample are not unique")
        return main, images

    def trials(self) -> list[Trial]:
        """Generator: fresh batches of each size."""
        out = [
            Trial(s, t, sub_seed(self.options["seed"], 1, s, t), Answers())
            for s in self.options["batch_sizes"]
            for t in range(self.options["trials"])
        ]
        prefix = "trial_s{}_t{:03d}_".format
        self.post([(lambda tr=tr: self.gen_sample(tr.s, tr.seed, prefix(tr.s, tr.trial)), tr.answers) for tr in out])
        return out

    def reference_pass(self, ref_source: Any) -> Answers:
        """The real reference faces, rendered at the generator's resolution when asked, through
        ``reference_detector`` (default: the audit's detector); answered from the reference cache when
        the same files were processed the same way against the same index before."""
        from . import reference_cache

        options = self.options
        downscale = options.get("reference_downscale")
        detector = options.get("reference_detector")
        params = replace(self.params, detector=detector) if detector else self.params
        answers = Answers()
        cache_dir = options.get("reference_cache")
        name = None
        if cache_dir is not False:
            directory = Path(cache_dir) if cache_dir else reference_cache.default_dir()
            rendering = {"downscale": downscale, "upscale": options["upscale"] if downscale else None}
            name = reference_cache.key(ref_source.files, rendering, params.to_query(), self.backend.info())
            cached = reference_cache.load(directory, name)
            if cached is not None:
                for body in cached:
                    self.check_calibration(body)
                    answers.add(body)
                if self.bar is not None:
                    self.bar.update(len(ref_source.files))
                log.info("reference faces from the cache (%s)", name[:12])
                return answers
        images = ref_source.read(list(range(len(ref_source.files))))
        if downscale:  # arrays: the in-process backend takes them as they are, a server gets PNGs
            from .sources import render_array

            images = [(image, render_array(data, downscale, options["upscale"])) for image, data in images]
        bodies: list[dict] = []
        self.post([(lambda: images, answers)], params, keep=bodies)
        if name is not None:
            reference_cache.save(directory, name, bodies)
        return answers

    def training_side(self, faces: int) -> dict:
        """The training side for ``faces`` generated faces, at the requests' thresholds (a series'
        shared one when it has one: see :class:`Shared`)."""
        options, params = self.options, self.params
        if self.shared.training is not None:
            training = self.shared.training
            if training["calibration"] != self.first[0]["calibration"]:
                raise AuditError(EXIT_SERVER, "the thresholds changed between checkpoints (was the index replaced?)")
            if training["faces"] != faces:
                log.info("training side of %d faces reused for %d generated faces", training["faces"], faces)
            return training
        log.info("computing the training side for %d generated faces", faces)
        self.shared.computed["training_side"] += 1
        training = self.backend.reference(
            faces=faces,
            seed=options["seed"],
            false_match_rate=params.false_match_rate,
            threshold=params.threshold,
            pair_false_match_rate=params.pair_false_match_rate,
            cells=options.get("ct_cells"),
            training_set_size=options.get("training_set_size"),
        )
        if training["calibration"] != self.first[0]["calibration"]:
            raise AuditError(EXIT_SERVER, "the training side's thresholds differ from the requests' (another index?)")
        self.shared.training = training
        return training
