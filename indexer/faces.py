"""The face pipeline: bytes → RGB pixels → face box → 5 landmarks → 150×150 chip → descriptor.

One module, shared by the indexer and the service, so that an indexed face and a query face go
through exactly the same code. Everything except the descriptor runs per image (and in worker
processes during a build); descriptors are computed in batches by an embedder
(:class:`DlibEmbedder`, or the PyTorch port in :mod:`indexer.resnet`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

DETECTORS = ("hog", "cnn", "aligned")
STATUSES = ("ok", "no_face", "unreadable")
CHIP_SIZE = 150
CHIP_PADDING = 0.25  # what face_recognition / dlib's compute_face_descriptor use
MAX_PIXELS = 40_000_000  # our own cap, well under Pillow's bomb limit (≈179 Mpx)
MIN_SIDE = 16  # below this there is no face to find
MAX_DETECT_PIXELS = 4_000_000  # HOG/CNN upsampling never goes beyond this many pixels

# Aligned mode (no detection) and landmark refinement. Both constant sets were fitted on celeba10k
# with `python scripts/fit_aligned.py --fit` (see README "Aligned mode"): the start box is the median
# HOG box relative to the image size; the refinement maps 5 landmarks to the box HOG would draw.
ALIGNED_INIT_BOX = (0.236, 0.4128, 0.7191, 0.8165)  # (l, t, r, b) as fractions of (w, h, w, h)
# box centre = landmark centroid + s·(dx, dy); box side = s·side, s = RMS distance of the
# landmarks from their centroid.
ALIGNED_REFINE = {"dx": -0.1063, "dy": 0.6973, "side": 4.1187}
REFINE_PASSES = 3  # landmark refinement passes, in every detector mode (see refined_landmarks)
# The attribute probes' context crop (face_extras; indexer.attributes uses it as a feature set).
CROP_SIZE = 16
CROP_PADDING = 0.5  # 0.8 left 21% of a celeba10k crop black (outside the 89×109 image); 0.5: 1.3%


class Unreadable(Exception):
    """The bytes are not a usable image; the message says why (shown to users)."""


@dataclass
class Face:
    """What the pipeline knows about one image before embedding."""

    status: str
    reason: str = ""
    width: int = 0
    height: int = 0
    faces_found: int = 0
    box: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) in image pixels
    landmarks: np.ndarray | None = None  # (5, 2) float32, dlib 5-point order
    chip: np.ndarray | None = field(default=None, repr=False)  # (150, 150, 3) uint8
    # Width in image pixels of the region the chip was cut from: the chip holds min(source_px, 150)
    # pixels of real detail across (see effective_resolution). None for faces without a chip.
    source_px: float | None = None
    # With ``attributes=True`` (face_extras): 68 landmarks and the probes' context crop.
    landmarks68: np.ndarray | None = field(default=None, repr=False)  # (68, 2) float32
    attr_crop: np.ndarray | None = field(default=None, repr=False)  # (CROP_SIZE·CROP_SIZE·3,) uint8

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Embedder(Protocol):
    """Anything that turns (N,150,150,3) uint8 chips into (N,128) float32 descriptors."""

    def embed(self, chips: np.ndarray) -> np.ndarray: ...


# ----------------------------------------------------------------------------- models


@cache
def model_paths() -> dict[str, str]:
    """Paths of the dlib model files that ship inside ``face_recognition_models``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation warning
        import face_recognition_models as frm
    return {
        "resnet": frm.face_recognition_model_location(),
        "landmarks5": frm.pose_predictor_five_point_model_location(),
        "mmod": frm.cnn_face_detector_model_location(),
    }


@cache
def model_hashes() -> dict[str, str]:
    """sha256 of each model file; an index built with other weights must not be queried."""
    out = {}
    for name, path in model_paths().items():
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[name] = h.hexdigest()
    return out


_local = threading.local()  # dlib objects per thread: the service runs queries in threads


def _dlib_obj(name: str):
    obj = getattr(_local, name, None)
    if obj is None:
        import dlib

        if name == "hog":
            obj = dlib.get_frontal_face_detector()
        elif name == "cnn":
            obj = dlib.cnn_face_detection_model_v1(model_paths()["mmod"])
        elif name == "sp5":
            obj = dlib.shape_predictor(model_paths()["landmarks5"])
        elif name == "rec":
            obj = dlib.face_recognition_model_v1(model_paths()["resnet"])
        elif name == "sp68":  # not in model_paths: its hash is not part of an index's identity
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pkg_resources deprecation warning
                import face_recognition_models as frm
            obj = dlib.shape_predictor(frm.pose_predictor_model_location())
        else:  # pragma: no cover - programming error
            raise KeyError(name)
        setattr(_local, name, obj)
    return obj


def pipeline_signature() -> dict:
    """The constants that decide which landmarks and chip a face gets. Descriptors from an index
    built with other values are not comparable with today's queries, so the store refuses it."""
    return {
        "chip_size": CHIP_SIZE,
        "chip_padding": CHIP_PADDING,
        "refine_passes": REFINE_PASSES,
        "aligned_init_box": list(ALIGNED_INIT_BOX),
        "aligned_refine": dict(ALIGNED_REFINE),
    }


# ----------------------------------------------------------------------------- decode

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow warns above this and raises above twice this
_OBJ_REPR = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>")
# What uploads and datasets may be. An allow-list: Pillow opens dozens of formats, some of which
# decode everything inside Image.open (ICO), trust a size that lies, or run Ghostscript (EPS).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an (H, W, 3) uint8 RGB array, or raise :class:`Unreadable`.

    Handles the formats users actually upload (:data:`FORMATS`): greyscale, palette, CMYK, alpha
    (composited on white), 16-bit and float images (rescaled, not clipped), animated images (first
    frame), and EXIF orientation. The pixel cap is checked from the header, before any pixel is
    decoded, and the conversions avoid full-size float copies (a 40 Mpx image costs ~0.3-0.45 GB).
    """
    if not data:
        raise Unreadable("empty file (0 bytes)")
    if max_pixels > Image.MAX_IMAGE_PIXELS:  # a server configured above the default cap
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. "Truncated File Read" in EXIF: not fatal
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)  # frame 0 of an animation is selected
            w, h = im.size
            if w * h > max_pixels:
                raise Unreadable(f"image too large: {w}x{h} = {w * h} pixels (limit {max_pixels})")
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            arr = _to_rgb(im)
    except Unreadable:
        raise
    except Image.UnidentifiedImageError:
        raise Unreadable(f"not a supported image (formats: {', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise Unreadable(f"image too large (decompression bomb): {e}") from None
    except Exception as e:  # PIL raises many types for bad data (OSError, SyntaxError, ValueError…)
        # Pillow names the in-memory file by its address; keep the reason deterministic.
        msg = _OBJ_REPR.sub("<image bytes>", str(e))
        raise Unreadable(f"cannot decode image: {type(e).__name__}: {msg}") from None
    return _check_side(arr)


def _check_side(arr: np.ndarray) -> np.ndarray:
    if min(arr.shape[:2]) < MIN_SIDE:
        raise Unreadable(f"image too small: {arr.shape[1]}x{arr.shape[0]} (minimum side {MIN_SIDE})")
    return arr


def from_array(arr: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image already decoded (a generator's sample): the (H, W, 3) uint8 RGB array :func:`decode`
    gives for its lossless PNG, without the encoding round trip. The same checks and conversions: the
    pixel cap, the minimum side, and grey, alpha or other modes through the decoder's own conversion."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise Unreadable(f"not an image array: shape {arr.shape}")
    h, w = arr.shape[:2]
    if w * h > max_pixels:
        raise Unreadable(f"image too large: {w}x{h} = {w * h} pixels (limit {max_pixels})")
    if not (arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3):
        try:
            arr = _to_rgb(Image.fromarray(arr))
        except (TypeError, ValueError) as e:  # a dtype or channel count Pillow has no mode for
            raise Unreadable(f"not an image array: {arr.dtype} {arr.shape}: {e}") from None
    return _check_side(np.ascontiguousarray(arr))


def _grey_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode != "F" and a.min() >= 0 and a.max() <= 65535:
            if mode == "I" and a.max() <= 255:
                return _grey_to_rgb(a.astype(np.uint8))
            # 16-bit → 8-bit, exactly rint(a / 257) in integers (no float64 copies)
            return _grey_to_rgb(((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))
        # Float or wide-range int: min-max rescale over the finite values, in place in one float32
        # copy (none at all for a writable float32 array), without boolean-indexed copies.
        f = a.astype(np.float32, copy=not a.flags.writeable)
        del a
        finite = np.isfinite(f)
        if not finite.any():
            raise Unreadable("image has no finite pixel values")
        lo = float(np.min(f, where=finite, initial=np.inf))
        hi = float(np.max(f, where=finite, initial=-np.inf))
        del finite
        np.nan_to_num(f, copy=False, nan=lo, posinf=hi, neginf=lo)
        f -= lo
        f *= 255.0 / (hi - lo or 1.0)
        np.rint(f, out=f)
        np.clip(f, 0, 255, out=f)
        return _grey_to_rgb(f.astype(np.uint8))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))  # alpha-composite on white, without RGBA copies
        im = bg
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def read_file(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file (same decoder as uploads, so index and queries see the same pixels)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise Unreadable(f"cannot read file: {e.strerror or e}") from None
    return decode(data, max_pixels)


# ----------------------------------------------------------------------------- detect


def _rect(box):
    import dlib

    l, t, r, b = (int(round(v)) for v in box)
    return dlib.rectangle(l, t, r, b)


def _box(rect) -> tuple[int, int, int, int]:
    return (int(rect.left()), int(rect.top()), int(rect.right()), int(rect.bottom()))


def _upsample_levels(img: np.ndarray) -> list[int]:
    """0, 1, 2 upsamplings, smallest first, capped so the detector never sees > MAX_DETECT_PIXELS.

    dlib's HOG window is 80×80 px, so a face in an 89×109 CelebA crop (~45 px) needs one
    doubling; a 178×218 crop or a 500 px photo usually needs none.
    """
    h, w = img.shape[:2]
    levels = [u for u in (0, 1, 2) if h * w * 4**u <= MAX_DETECT_PIXELS]
    return levels or [0]


def detect(img: np.ndarray, detector: str) -> list[tuple[int, int, int, int]]:
    """All face boxes found by ``hog`` or ``cnn``, largest first.

    Upsampling is automatic: the smallest level that finds a face wins, so small faces are found
    without paying the upsampling cost on large photos.
    """
    h, w = img.shape[:2]
    k = 1
    while math.ceil(h / k) * math.ceil(w / k) > MAX_DETECT_PIXELS:
        k += 1
    if k > 1:
        # A photo above the detector's pixel budget is searched at 1/k size (box filter): dlib's
        # pyramid over the full image would cost ~10 bytes a pixel and seconds. The smallest face
        # found grows to ~80·k px (HOG's window). Landmarks and the chip still come from the
        # full-resolution image; the boxes are mapped back (and clamped) here.
        small = np.asarray(Image.fromarray(img).reduce(k))
        return [
            (l * k, t * k, min((r + 1) * k - 1, w - 1), min((b + 1) * k - 1, h - 1))
            for l, t, r, b in _detect(small, detector)
        ]
    return _detect(img, detector)


def _detect(img: np.ndarray, detector: str) -> list[tuple[int, int, int, int]]:
    if detector == "hog":
        det = _dlib_obj("hog")
        rects = []
        for u in _upsample_levels(img):
            rects = list(det(img, u))
            if rects:
                break
    elif detector == "cnn":
        det = _dlib_obj("cnn")
        rects = []
        for u in _upsample_levels(img)[:2]:  # MMOD finds ~40 px faces; it is slow on CPU
            rects = [d.rect for d in det(img, u)]
            if rects:
                break
    else:
        raise ValueError(f"unknown detector {detector!r} (expected one of {DETECTORS})")
    boxes = [_box(r) for r in rects]
    boxes.sort(key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return boxes


def intensity(img: np.ndarray) -> np.ndarray:
    """dlib's grey level of each RGB pixel, ``(r + g + b) // 3`` (its ``get_pixel_intensity``).

    Why: dlib's shape predictors read only these intensities, so a grey image gives the very same
    landmarks (tests/test_descriptor_precision.py checks it on aligned and wild photos) while dlib
    converts ~3x fewer bytes and skips the per-lookup averaging: the 68-point pass is ~15% cheaper.
    """
    if img.ndim == 2:
        return img
    # Three plane adds in uint16 (≤ 765): ~8x faster than a uint16 sum over the channel axis.
    return ((img[..., 0].astype(np.uint16) + img[..., 1] + img[..., 2]) // 3).astype(np.uint8)


def landmarks(img: np.ndarray, box) -> np.ndarray:
    """dlib's 5-point landmarks (eye corners and nose base) inside ``box``, as (5, 2) float32."""
    shape = _dlib_obj("sp5")(img, _rect(box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def box_from_landmarks(pts: np.ndarray) -> tuple[float, float, float, float]:
    """The box HOG would have drawn around a face with these landmarks (fitted, see constants)."""
    c = pts.mean(axis=0)
    s = float(np.sqrt(((pts - c) ** 2).sum(axis=1).mean()))
    cx, cy = c[0] + ALIGNED_REFINE["dx"] * s, c[1] + ALIGNED_REFINE["dy"] * s
    half = ALIGNED_REFINE["side"] * s / 2
    return (cx - half, cy - half, cx + half, cy + half)


def refined_landmarks(img: np.ndarray, box) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Landmarks from ``box``, then ``REFINE_PASSES`` times: box ← box_from_landmarks, landmarks
    again; the result is the mean of the last two landmark sets.

    The 5-point predictor's output depends on its starting box, and detectors disagree on boxes
    (HOG's are quantised by its scale pyramid; MMOD's have other proportions; aligned mode has no
    detector at all). Iterating box → landmarks → box converges to the same landmarks from any
    reasonable start for most faces; the rest settle into a 2-cycle, which the final average
    cancels. Measured on 600 celeba10k faces (landmark sets from a HOG start vs the aligned start):
    identical for 77% after 2 plain passes, 84% with 3 passes + averaging (p90 of the max landmark
    difference halves, 0.092 → 0.049 of the face radius).
    """
    seq, boxes = [landmarks(img, box)], [box]
    while len(seq) <= REFINE_PASSES:
        k = len(seq)  # the next pass: box_k from landmarks_{k-1}, then landmarks_k
        period = next((p for p in (1, 2) if k - 1 - p >= 0 and np.array_equal(seq[-1], seq[-1 - p])), None)
        if period is not None:
            # landmarks_{k-1} repeat landmarks_{k-1-p}, so every later pass repeats pass k-p (the
            # predictor is a deterministic function of the image and the box): no need to run it.
            # This skips ~1.1 of the 3 passes on celeba10k, with the very same result.
            boxes.append(boxes[-period])
            seq.append(seq[-period])
        else:
            boxes.append(box_from_landmarks(seq[-1]))
            seq.append(landmarks(img, boxes[-1]))
    return tuple(int(round(v)) for v in boxes[-1]), (seq[-min(2, len(seq))] + seq[-1]) / 2  # type: ignore[return-value]


def aligned_start_box(img: np.ndarray) -> tuple[float, float, float, float]:
    """The fixed starting box of aligned mode: CelebA's median HOG box, relative to the image."""
    h, w = img.shape[:2]
    fl, ft, fr, fb = ALIGNED_INIT_BOX
    return (fl * w, ft * h, fr * w, fb * h)


def cut_chip(
    img: np.ndarray, pts: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> tuple[np.ndarray, float]:
    """dlib's aligned face chip (similarity transform from the 5 landmarks), as dlib computes it,
    and the width in image pixels of the region it was cut from (the face's source resolution).

    ``get_face_chip_details`` + ``extract_image_chip`` is what ``dlib.get_face_chip`` runs; calling
    the two halves gives the same pixels (checked on celeba10k and wild photos) plus the rectangle.
    """
    import dlib

    parts = [dlib.point(int(round(x)), int(round(y))) for x, y in pts]
    rect = dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)
    details = dlib.get_face_chip_details(dlib.full_object_detection(rect, parts), size=size, padding=padding)
    chip = np.asarray(dlib.extract_image_chip(img, details), dtype=np.uint8)
    return chip, float(details.rect.width())


def chip_from_landmarks(
    img: np.ndarray, pts: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """dlib's aligned face chip (similarity transform from the 5 landmarks), as dlib computes it."""
    return cut_chip(img, pts, size, padding)[0]


def preload(landmarks68: bool = False) -> None:
    """Load the 5-point landmark model (and, with ``landmarks68``, the 68-point one, ~100 MB) in this
    thread now: a worker's first task then does not wait for it, and a forkserver that loads it shares
    it with every worker it forks."""
    _dlib_obj("sp5")
    if landmarks68:
        _dlib_obj("sp68")


def landmarks68(img: np.ndarray, box) -> np.ndarray:
    """dlib's 68 landmarks (iBUG order) inside ``box`` (l, t, r, b), as (68, 2) float32 image coordinates.

    The box is the refined one of :func:`refined_landmarks` (the box HOG would draw), the kind of box
    the 68-point predictor was trained on."""
    shape = _dlib_obj("sp68")(img, _rect(box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_extras(
    img: np.ndarray, box, pts5: np.ndarray, grey: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image work for the attribute probes and geometry (:mod:`indexer.attributes`,
    :mod:`indexer.geometry`): (68 landmarks (68, 2) float32, context crop (CROP_SIZE·CROP_SIZE·3,) uint8).
    ``grey``: the image's :func:`intensity`, when the caller has it already."""
    lm = landmarks68(intensity(img) if grey is None else grey, box)
    crop = chip_from_landmarks(img, pts5, CROP_SIZE, CROP_PADDING).reshape(-1)
    return lm, crop


def find_face(img: np.ndarray, detector: str, attributes: bool = False) -> Face:
    """Detect (or derive) the face, keep the largest, and cut its chip; with ``attributes``, also the
    68 landmarks and the attribute probes' context crop (:func:`face_extras`)."""
    return _raised(find_faces([img], detector, attributes)[0])


def _raised(face: Face | Exception) -> Face:
    """One image's result of :func:`find_faces` / :func:`process_many`: the face, or its error raised."""
    if isinstance(face, Exception):
        raise face
    return face


def find_faces(imgs: list[np.ndarray], detector: str, attributes: bool = False) -> list[Face | Exception]:
    """:func:`find_face` of every image, one stage at a time (start box, landmark refinement, chip,
    extras), each image's result exactly as :func:`find_face` makes it alone.

    Why stage by stage: dlib's landmark predictors are forests (the 68-point one ~100 MB) read at
    random; running one model over all the images in a row keeps its hot trees in cache instead of
    evicting them with the other model's. On celeba10k, decode to chip and extras took 5.3 ms an
    image one by one and 3.0 stage by stage, on one core (``scripts/bench_faces.py``). An image
    that raises in a stage gets the exception in its slot (its traceback attached) and leaves the
    later stages; the other images go on.
    """
    out: list[Face | Exception | None] = [None] * len(imgs)
    live: dict[int, dict] = {i: {} for i in range(len(imgs))}

    def stage(fn: Callable[[np.ndarray, dict], Face | None]) -> None:
        for i in list(live):
            try:
                done = fn(imgs[i], live[i])
            except Exception as e:
                done = e
            if done is not None:
                out[i] = done
                del live[i]

    def start(img: np.ndarray, s: dict) -> Face | None:
        if detector == "aligned":
            s["start"], s["n"] = aligned_start_box(img), 1
        else:
            boxes = detect(img, detector)
            if not boxes:
                h, w = img.shape[:2]
                return Face("no_face", "no face detected", w, h, 0)
            s["start"], s["n"] = boxes[0], len(boxes)
        s["grey"] = intensity(img)  # the landmark passes read only intensities: identical landmarks, cheaper
        return None

    def refine(img: np.ndarray, s: dict) -> None:
        s["box"], s["pts"] = refined_landmarks(s["grey"], s["start"])

    def chip(img: np.ndarray, s: dict) -> Face | None:
        h, w = img.shape[:2]
        c, source_px = cut_chip(img, s["pts"])
        s["face"] = Face("ok", "", w, h, s["n"], tuple(int(v) for v in s["box"]), s["pts"], c, source_px)  # type: ignore[arg-type]
        return None if attributes else s["face"]  # with attributes, the extras stage finishes it

    def extras(img: np.ndarray, s: dict) -> Face:
        face = s["face"]
        face.landmarks68, face.attr_crop = face_extras(img, face.box, s["pts"], s["grey"])
        return face

    for fn in (start, refine, chip) + ((extras,) if attributes else ()):
        stage(fn)
    return out  # type: ignore[return-value]


PROCESS_GROUP_BYTES = 32 << 20  # decoded pixels that process_many holds at once


def process_many(
    sources: list, load: Callable, detector: str, attributes: bool = False
) -> tuple[list[Face | Exception], float, float]:
    """The face pipeline on many images: ``load(source)`` decodes one (raising :class:`Unreadable`
    for bad input), :func:`find_faces` runs on groups of up to ``PROCESS_GROUP_BYTES`` of decoded
    pixels (so a task of large photos is not all held at once).

    Returns (one :class:`Face` per source, or the unexpected exception its pipeline raised, for the
    caller to report; decode seconds; face seconds)."""
    out: list[Face | Exception | None] = []
    group: list[tuple[int, np.ndarray]] = []
    held, t_decode, t_face = 0, 0.0, 0.0

    def flush() -> None:
        nonlocal held, t_face
        t0 = time.perf_counter()
        for (j, _), face in zip(group, find_faces([img for _, img in group], detector, attributes)):
            out[j] = face
        t_face += time.perf_counter() - t0
        group.clear()
        held = 0

    for src in sources:
        t0 = time.perf_counter()
        try:
            img = load(src)
        except Unreadable as e:
            out.append(Face("unreadable", str(e)))
        except Exception as e:  # the caller reports it as an internal error of this image
            out.append(e)
        else:
            out.append(None)
            group.append((len(out) - 1, img))
            held += img.nbytes
        t_decode += time.perf_counter() - t0
        if held >= PROCESS_GROUP_BYTES:
            flush()
    if group:
        flush()
    return out, t_decode, t_face  # type: ignore[return-value]


def process_bytes(data: bytes, detector: str, max_pixels: int = MAX_PIXELS, attributes: bool = False) -> Face:
    """Bytes → :class:`Face`; bad input becomes a status, never an exception."""
    return _raised(process_many([data], partial(decode, max_pixels=max_pixels), detector, attributes)[0][0])


def process_file(path: str | Path, detector: str, max_pixels: int = MAX_PIXELS, attributes: bool = False) -> Face:
    return _raised(process_many([path], partial(read_file, max_pixels=max_pixels), detector, attributes)[0][0])


# ----------------------------------------------------------------------------- resolution matching

RESOLUTION_MATCH_RATIO = 1.5  # degrade a query whose chip holds more than this × the index's detail


def effective_resolution(source_px: float) -> float:
    """Pixels of real detail across a chip cut from a region ``source_px`` wide: the source width,
    up to the chip's own 150 (dlib samples a larger face down through its pyramid)."""
    return min(float(source_px), float(CHIP_SIZE))


def degrade_chip(chip: np.ndarray, px: int) -> np.ndarray:
    """``chip`` as if cut from a face ``px`` wide: resampled down to px × px (antialiased), then
    back up to the chip size bilinearly, as dlib enlarges a small face into its chip."""
    im = Image.fromarray(chip)
    small = im.resize((px, px), Image.BILINEAR)
    return np.asarray(small.resize((chip.shape[1], chip.shape[0]), Image.BILINEAR), dtype=np.uint8)


def too_sharp(source_px: float | None, index_px: float | None, ratio: float = RESOLUTION_MATCH_RATIO) -> bool:
    """Whether a query chip cut from a region ``source_px`` wide is degraded against an index whose
    faces are ``index_px`` wide: its effective resolution exceeds ``ratio`` × ``index_px``."""
    return source_px is not None and index_px is not None and effective_resolution(source_px) > ratio * index_px


def match_resolution(
    chip: np.ndarray, source_px: float | None, index_px: float | None, ratio: float = RESOLUTION_MATCH_RATIO
) -> np.ndarray:
    """The query chip to embed against an index whose faces are ``index_px`` wide (median source width).

    Rule: a chip whose effective resolution exceeds ``ratio`` × ``index_px`` is degraded to
    ``index_px`` (:func:`degrade_chip`); others, and every chip when either width is unknown, are
    used as cut. Why: the descriptor of a sharp photo and of a blurry one of the same face differ
    systematically, so a sharp query sits farther from its own person's low-resolution training
    faces than those sit from each other. Measured: README, "Identification quality".
    """
    if not too_sharp(source_px, index_px, ratio):
        return chip
    return degrade_chip(chip, max(1, int(round(index_px))))


# ----------------------------------------------------------------------------- embed


class DlibEmbedder:
    """dlib's own descriptor (reference implementation; one core, ~85 ms per chip)."""

    name = "dlib"
    device = "cpu"

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, 128), np.float32)
        rec = _dlib_obj("rec")
        out = rec.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.asarray([np.asarray(v) for v in out], dtype=np.float32)


def describe(embedder: Embedder, chips: np.ndarray, flip_average: bool) -> np.ndarray:
    """The descriptors of ``chips`` as an index with this ``flip_average`` setting stores them.

    Every place that turns chips into descriptors (build workers, the build's main process, the
    service's queries) calls this, so index rows and queries are the same function of the chip.
    ``flip_average``: the mean of the chip's descriptor and its mirror image's (one batched pass
    over both). The network is not mirror-symmetric: a chip and its mirror image are a median 0.20
    apart on celeba10k (the identity threshold is ~0.37), and their mean is a steadier estimate of
    the identity: see README, "Identification quality". Indexes built before the option existed
    hold plain descriptors (``flip_average`` False), and their queries stay plain.
    """
    chips = np.asarray(chips)
    if not flip_average or len(chips) == 0:
        return embedder.embed(chips)
    both = embedder.embed(np.concatenate([chips, chips[:, :, ::-1]]))
    n = len(chips)
    return (both[:n] + both[n:]) / 2


def make_embedder(kind: str = "torch", device: str = "auto", precision: str = "fp32") -> Embedder:
    """``torch`` (batched PyTorch port, GPU when present; ``precision`` fp32: exact parity, bf16:
    ~2x faster, see ``resnet.PRECISIONS``) or ``dlib`` (reference, fp32 only)."""
    if kind == "dlib":
        if device == "cuda":
            raise RuntimeError("--embedder dlib runs on the CPU only (dlib-bin has no CUDA)")
        if precision != "fp32":
            raise ValueError("the dlib embedder computes fp32 descriptors only")
        return DlibEmbedder()
    if kind == "torch":
        from .resnet import TorchEmbedder

        return TorchEmbedder(device=device, precision=precision)
    raise ValueError(f"unknown embedder {kind!r} (expected torch or dlib)")
