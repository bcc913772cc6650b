"""Image sources for the audit: a folder of generated images, images in memory, or a PyTorch generator.

Why a generator and not only a folder: the birthday-paradox test (Arora & Zhang) needs *fresh*
samples for every trial; a fixed folder (or list of images) can only be re-drawn as subsets
without replacement.

``--generator SPEC`` forms (see :func:`load_generator`):

* ``ADAPTER:CHECKPOINT`` with a built-in adapter name, e.g.
  ``dcgan32:../shared/data/generated/dcgan32_celeba/checkpoint_G.pth``, or
  ``diffusers:DIR`` for any local unconditional diffusers pipeline folder (sampled with ``--steps``);
* ``module:callable:CHECKPOINT`` — your own adapter: ``callable(checkpoint, device)`` returns a
  sampler (below);
* ``module:callable`` — your own sampler: ``callable(n, seed)`` returns ``n`` images.

A sampler returns either a uint8 array (N, H, W, 3), or float images (N, 3, H, W) (NumPy or torch)
in the tanh range [−1, 1]; :func:`to_uint8` converts them. Samples depend only on ``(n, seed)``.
"""

from __future__ import annotations

import importlib
import io
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from indexer.datasets import IMAGE_EXTS, read_folder

from ..generators.render import centre_square

log = logging.getLogger(__name__)


class SourceError(Exception):
    """The folder or generator cannot be used; the message says why (shown to users)."""


class Sampler(Protocol):
    def __call__(self, n: int, seed: int) -> Any: ...


# ----------------------------------------------------------------------------- conversions


def to_uint8(images: Any) -> np.ndarray:
    """Generator output → (N, H, W, 3) uint8. Floats are taken as tanh output in [−1, 1]. Layout:
    NCHW (the PyTorch convention) when axis 1 has 1 or 3 channels, unless only the last axis has 3,
    then NHWC; one channel is repeated to grey RGB."""
    if hasattr(images, "detach"):  # torch tensor
        images = images.detach().to("cpu").float().numpy()
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise SourceError(f"generator returned an array of shape {a.shape}; expected (N, 3, H, W) or (N, H, W, 3)")
    channels_first = a.shape[1] in (1, 3) and not (a.shape[-1] == 3 and a.shape[1] != 3)
    if channels_first:
        a = a.transpose(0, 2, 3, 1)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] != 3:
        raise SourceError(f"generator returned images of shape {a.shape}; expected 3 colour channels")
    a = (np.clip(a.astype(np.float64), -1.0, 1.0) + 1.0) * 127.5
    return np.ascontiguousarray(np.rint(a).astype(np.uint8))


def png_bytes(img: np.ndarray) -> bytes:
    """Lossless encoding: the service sees exactly the generator's pixels."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def encoded(data: bytes | np.ndarray) -> bytes:
    """What goes over the wire for one image: bytes as they are, a decoded array as its lossless PNG."""
    return png_bytes(data) if isinstance(data, np.ndarray) else data


def render_at(data: bytes, size: int, upscale: int = 0) -> bytes:
    """``data`` as a ``size``×``size`` image would look after a generator's pipeline: the centre
    square, downscaled (antialiased bilinear), then enlarged to ``upscale`` px (bicubic) as samples
    are (:meth:`GeneratorSource.sample`). Bytes that do not decode are returned unchanged, so the
    service gives them their usual per-image status. Why: a real-face null for a low-resolution
    generator must have lost the same detail (at 32 px the descriptor barely separates people)."""
    return encoded(render_array(data, size, upscale))


def render_array(data: bytes, size: int, upscale: int = 0) -> bytes | np.ndarray:
    """:func:`render_at` without the PNG: the rendered (H, W, 3) uint8 array, which an in-process
    audit hands to the face pipeline as it is; bytes that do not decode, unchanged."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = centre_square(im, size)
            if upscale and size < upscale:
                im = im.resize((upscale, upscale), Image.BICUBIC)
            return np.asarray(im)
    except Exception:  # noqa: BLE001 - whatever a hostile file raises, the service reports it
        return data


# ----------------------------------------------------------------------------- sources


@dataclass
class FolderSource:
    """A flat or nested folder of images; trials are subsets drawn without replacement."""

    root: Path
    files: list[Path]
    kind: str = "folder"

    @classmethod
    def open(cls, root: str | Path) -> FolderSource:
        root = Path(root)
        if not root.is_dir():
            raise SourceError(f"generated images {root}: not a directory")
        files = [it.path for it in read_folder(root)]  # the indexer's own folder reader
        if not files:
            raise SourceError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTS))})")
        return cls(root, files)

    @property
    def describe(self) -> str:
        return f"folder {self.root} ({len(self.files)} images)"

    def names(self) -> list[str]:
        return [str(p.relative_to(self.root)) for p in self.files]

    def read(self, idx: list[int]) -> list[tuple[str, bytes]]:
        out = []
        for i in idx:
            try:
                data = self.files[i].read_bytes()
            except OSError as e:  # the service reports unreadable bytes; a vanished file is empty
                log.warning("cannot read %s: %s", self.files[i], e)
                data = b""
            out.append((str(self.files[i].relative_to(self.root)), data))
        return out


@dataclass
class ImagesSource:
    """Images handed over in memory (the notebook API's ``images=[...]``): paths, encoded bytes,
    uint8 arrays (H, W, 3) or (name, any of those) pairs. Behaves like a folder; arrays stay arrays
    (:func:`encoded` for a server)."""

    items: list[tuple[str, bytes | np.ndarray]]
    kind: str = "folder"

    @classmethod
    def of(cls, images: list[Any]) -> ImagesSource:
        items = []
        for i, it in enumerate(images):
            name, obj = it if isinstance(it, tuple) and len(it) == 2 and isinstance(it[0], str) else (None, it)
            if isinstance(obj, (str, Path)):
                path = Path(obj)
                if not path.is_file():
                    raise SourceError(f"images[{i}]: {path} is not a file")
                name, data = name or path.name, path.read_bytes()
            elif isinstance(obj, (bytes, bytearray, memoryview)):
                data = bytes(obj)
            else:
                data = to_uint8(np.asarray(obj)[None] if np.ndim(obj) == 3 else obj)[0]  # PNG-encoded for a server
            items.append((name or f"image{i:05d}.png", data))
        if not items:
            raise SourceError("images: empty list")
        if len({n for n, _ in items}) != len(items):
            raise SourceError("images: names are not unique")
        return cls(items)

    @property
    def describe(self) -> str:
        return f"{len(self.items)} images given in memory"

    @property
    def files(self) -> list[str]:
        return [n for n, _ in self.items]

    def names(self) -> list[str]:
        return self.files

    def read(self, idx: list[int]) -> list[tuple[str, bytes | np.ndarray]]:
        return [self.items[i] for i in idx]


@dataclass
class GeneratorSource:
    """A seeded sampler. ``sample(n, seed)`` is deterministic, so a report can be reproduced."""

    spec: str
    sampler: Callable[[int, int], Any]
    kind: str = "generator"

    @property
    def describe(self) -> str:
        return f"generator {self.spec}"

    def sample(self, n: int, seed: int, prefix: str = "g", upscale: int = 0) -> list[tuple[str, bytes]]:
        """``n`` samples as named PNGs (:meth:`arrays`, losslessly encoded: what a server is sent)."""
        return [(name, png_bytes(im)) for name, im in self.arrays(n, seed, prefix, upscale)]

    def arrays(self, n: int, seed: int, prefix: str = "g", upscale: int = 0) -> list[tuple[str, np.ndarray]]:
        """``n`` samples as named (H, W, 3) uint8 arrays, each enlarged to ``upscale`` px (:func:`enlarge`)."""
        return [(name, enlarge(im, upscale)) for name, im in self.raw(n, seed, prefix)]

    def raw(self, n: int, seed: int, prefix: str = "g") -> list[tuple[str, np.ndarray]]:
        """``n`` samples as named (H, W, 3) uint8 arrays at the generator's own size (a 32 px sample
        is 3 KB: what an audit keeps of its main sample for the report's thumbnails)."""
        try:
            imgs = to_uint8(self.sampler(n, seed))
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"generator {self.spec} failed: {type(e).__name__}: {e}") from None
        if len(imgs) != n:
            raise SourceError(f"generator {self.spec} returned {len(imgs)} images for n={n}")
        return [(f"{prefix}{i:05d}.png", im) for i, im in enumerate(imgs)]


KEEP_ARRAY_BYTES = 64 << 10  # a kept sample up to this size stays an array; a larger one is kept as its PNG


def keepsake(im: np.ndarray) -> np.ndarray | bytes:
    """A main-sample image as an audit keeps it for the report's thumbnails: the array as generated
    when small (a 32 px sample: 3 KB, a sixth of its enlarged PNG), else its lossless PNG (a 1024 px
    array is 3 MB, its PNG about half; encoding it costs far less than sampling it)."""
    return im if im.nbytes <= KEEP_ARRAY_BYTES else png_bytes(im)


def enlarge(im: np.ndarray, upscale: int) -> np.ndarray:
    """A sample smaller than ``upscale`` px enlarged (bicubic, longer side ``upscale``) before the face
    pipeline, because dlib's landmark predictor is unreliable on tiny faces (on the 32 px DCGAN, the
    aligned-mode descriptor is 0.13 from the HOG one at 32 px, 0.03 at 128 px); others as they are."""
    if not upscale or max(im.shape[:2]) >= upscale:
        return im
    h, w = im.shape[:2]
    f = upscale / max(h, w)
    return np.asarray(Image.fromarray(im).resize((round(w * f), round(h * f)), Image.BICUBIC))


# ----------------------------------------------------------------------------- DCGAN adapter


def dcgan32(checkpoint: str, device: str = "cpu") -> Sampler:
    """Adapter for the real DCGAN: z ~ U(−1, 1)^100, tanh output in [−1, 1] → uint8 32×32.

    Only the BatchNorm ``num_batches_tracked`` buffers may be missing from the checkpoint (it
    predates them); anything else missing or unexpected means it is another network.
    """
    import torch

    from ..generators.dcgan import DCGAN32

    path = Path(checkpoint)
    if not path.is_file():
        raise SourceError(f"generator checkpoint {path} not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise SourceError(f"cannot load generator checkpoint {path}: {type(e).__name__}: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    net = DCGAN32()
    try:
        res = net.load_state_dict(sd, strict=False)
    except Exception as e:  # not a mapping, or tensors of other shapes: another network
        raise SourceError(f"{path} is not a dcgan32 checkpoint: {type(e).__name__}: {str(e)[:300]}") from None
    bad_missing = [k for k in res.missing_keys if not k.endswith("num_batches_tracked")]
    if bad_missing or res.unexpected_keys:
        raise SourceError(
            f"{path} is not a dcgan32 checkpoint (missing {bad_missing}, unexpected {res.unexpected_keys})"
        )
    net.eval().to(device)

    @torch.no_grad()
    def sample(n: int, seed: int):
        g = torch.Generator().manual_seed(int(seed))
        z = torch.rand(n, net.nz, generator=g) * 2 - 1  # U(−1, 1)
        if device != "cpu":
            return net(z.to(device)).cpu()
        # One thread: the network is tiny (~5 ms per 64 samples), and a second thread's OpenMP
        # spin-waits cost far more than it saves while the in-process audit's workers hold the cores.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return net(z)
        finally:
            torch.set_num_threads(threads)

    return sample


# ----------------------------------------------------------------------------- diffusers adapter

DIFFUSERS_BATCH = 64  # samples denoised at once; per-sample seeds make the images independent of it


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample ``i`` of a call with ``seed``: each sample can be regenerated alone."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0])


def diffusers_pipeline(folder: str, device: str = "cpu", steps: int | None = None) -> Sampler:
    """Adapter for any local unconditional diffusers pipeline folder (``save_pretrained`` layout):
    ``DiffusionPipeline.from_pretrained(folder)`` with nothing downloaded. Sample ``i`` of a call
    ``(n, seed)`` starts from its own noise, seeded :func:`sample_seed` ``(seed, i)``; ``steps``
    denoising steps (default: the pipeline's own)."""
    import inspect
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach for the Hub
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    path = Path(folder)
    if not (path / "model_index.json").is_file():
        raise SourceError(f"{path}: not a diffusers pipeline folder (no model_index.json)")
    try:
        import torch
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # loading bars would interleave with the audit's own

        # fp16 weights (a checkpoint kept small) compute in fp32 on the CPU, where fp16 is slow and inexact
        dtype = {"dtype": torch.float32} if device == "cpu" else {}
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False, **dtype)
        pipe.to(device)
    except Exception as e:  # a half-written folder, a missing component, a pipeline class not installed
        raise SourceError(f"cannot load diffusers pipeline {path}: {type(e).__name__}: {str(e)[:300]}") from None
    params = inspect.signature(pipe.__call__).parameters
    if "batch_size" not in params or any(
        p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values()
    ):
        raise SourceError(f"{path}: {type(pipe).__name__} is not an unconditional pipeline (needs a prompt or image)")
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"output_type": "np"} | ({"num_inference_steps": int(steps)} if steps else {})

    @torch.no_grad()
    def sample(n: int, seed: int) -> np.ndarray:
        out = []
        for lo in range(0, n, DIFFUSERS_BATCH):
            idx = range(lo, min(n, lo + DIFFUSERS_BATCH))
            gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in idx]
            images = np.asarray(pipe(batch_size=len(gens), generator=gens, **kwargs).images)  # [0, 1] NHWC
            out.append(np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8))
        return np.concatenate(out)

    sample.sampling = {
        "steps": steps,
        "scheduler": type(pipe.scheduler).__name__,
        "per_sample_seed": "SeedSequence([seed, i])",
    }
    return sample


ADAPTERS: dict[str, Callable[..., Sampler]] = {"dcgan32": dcgan32, "diffusers": diffusers_pipeline}
ADAPTER_OPTIONS = {"diffusers": ("steps",)}  # the audit options an adapter takes


def _import(target: str) -> Callable:
    mod_name, _, attr = target.partition(":")
    if not mod_name or not attr:
        raise SourceError(f"--generator {target!r}: expected module:callable")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # user modules next to where the audit is run
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise SourceError(f"--generator: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SourceError(f"--generator: {mod_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SourceError(f"--generator: {target} is not callable")
    return obj


def load_generator(spec: str, device: str = "cpu", steps: int | None = None) -> GeneratorSource:
    """Parse ``--generator SPEC`` (forms in the module docstring) into a seeded source; ``steps``
    goes to the adapters that denoise (``diffusers``)."""
    head, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SourceError(
            f"--generator {spec!r}: expected ADAPTER:CHECKPOINT ({', '.join(ADAPTERS)}), "
            f"module:callable or module:callable:CHECKPOINT"
        )
    if head in ADAPTERS:
        extra = {"steps": steps} if "steps" in ADAPTER_OPTIONS.get(head, ()) else {}
        return GeneratorSource(spec, ADAPTERS[head](rest, device, **extra))
    attr, sep2, ckpt = rest.partition(":")
    fn = _import(f"{head}:{attr}")
    if sep2:
        try:
            sampler = fn(ckpt, device)
        except SourceError:
            raise
        except Exception as e:
            raise SourceError(f"--generator {spec}: adapter failed: {type(e).__name__}: {e}") from None
        if not callable(sampler):
            raise SourceError(f"--generator {spec}: adapter returned {type(sampler).__name__}, not a sampler")
        return GeneratorSource(spec, sampler)
    return GeneratorSource(spec, fn)
