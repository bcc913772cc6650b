"""PyTorch port of dlib's 128-d face descriptor network (``dlib_face_recognition_resnet_model_v1``).

Why: dlib's CPU forward pass is single-threaded and costs ~85 ms per face chip; this port runs the
same network batched in PyTorch (~30x faster on 2 cores) and reproduces
``dlib.face_recognition_model_v1.compute_face_descriptor(chip)`` to float32 round-off.

The weights are read straight from dlib's own serialised ``.dat`` file (no dlib import, no other
weight source). The file layout and the architecture facts used here are documented in
``shared/notes/dlib-resnet-port.md``; the points that matter most for exactness are:

* scalar floats are (mantissa, exponent) pairs, tensors are raw little-endian float32;
* the net is written outside-in: all wrapper headers first, then the layer records innermost-first,
  and tags/skips carry no id, so the parse must follow the known architecture;
* stride-2 convs and all pools are unpadded; stride-1 3x3 convs pad by 1;
* ``add_prev`` zero-pads the smaller operand at the *end* of C, H and W (no projection shortcut);
* input is RGB planar ``(v - mean_c) / 256`` with the means stored in the file; output is not normalised.

Chips must come from ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` (this module ports
only the network, not chip extraction).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .devices import resolve_precision

__all__ = [
    "DlibNetWeights",
    "DlibResNet",
    "TorchEmbedder",
    "default_model_path",
    "load_dlib_resnet",
    "parse_dlib_resnet",
]

logger = logging.getLogger(__name__)

CHIP_SIZE = 150
EMBED_DIM = 128

# --------------------------------------------------------------------------------------------
# Architecture (forward order). dlib's anet_type:
#   fc_no_bias<128> <- avg_pool_everything <- level0 <- level1 <- level2 <- level3 <- level4
#   <- max_pool<3,3,2,2> <- relu <- affine <- con<32,7,7,2,2> <- input_rgb_image_sized<150>
# level4 = 3 x ares<32>; level3 = ares_down<64> + 3 x ares<64>; level2 = ares_down<128> + 2 x ares<128>;
# level1 = ares_down<256> + 2 x ares<256>; level0 = ares_down<256>.
# --------------------------------------------------------------------------------------------

#: (num_filters, downsample) for each residual block, in forward order.
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),)
    + ((64, False),) * 3
    + ((128, True),)
    + ((128, False),) * 2
    + ((256, True),)
    + ((256, False),) * 2
    + ((256, True),)
)


def _layer_sequence() -> list[tuple]:
    """Forward-order list of every wrapper in the net, used to drive the (id-less) file walk.

    Items: ("con", filters, k, stride, pad), ("affine",), ("relu",), ("max_pool", k, stride, pad),
    ("avg_pool", k, stride, pad) (k=0: global), ("add_prev",), ("fc", outputs), ("tag",), ("skip",).
    """
    seq: list[tuple] = [("con", 32, 7, 2, 0), ("affine",), ("relu",), ("max_pool", 3, 2, 0)]
    for filters, down in BLOCKS:
        stride = 2 if down else 1
        # dlib's default padding: stride != 1 -> 0, stride 1 -> k/2.
        seq += [
            ("tag",),  # tag1 on the block input
            ("con", filters, 3, stride, 0 if down else 1),
            ("affine",),
            ("relu",),
            ("con", filters, 3, 1, 1),
            ("affine",),
        ]
        if down:
            # tag2 on the branch, skip1 back to the input, 2x2/2 average pool of the input.
            seq += [("tag",), ("skip",), ("avg_pool", 2, 2, 0)]
        seq += [("add_prev",), ("relu",)]
    seq += [("avg_pool", 0, 1, 0), ("fc", EMBED_DIM)]
    return seq


# --------------------------------------------------------------------------------------------
# dlib serialisation primitives
# --------------------------------------------------------------------------------------------


class DlibFormatError(ValueError):
    """The file does not match dlib's serialisation of the expected network."""


class _Reader:
    """Cursor over the file bytes implementing dlib's ``deserialize`` primitives."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DlibFormatError(f"unexpected end of file at byte {self.pos} (wanted {n} bytes)")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def int(self) -> int:
        """Control byte (low nibble = byte count, 0x80 = negative) + little-endian magnitude."""
        ctrl = self._take(1)[0]
        size = ctrl & 0x0F
        if not 1 <= size <= 8:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def bool(self) -> bool:
        b = self._take(1)
        if b not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {b!r} at byte {self.pos - 1}")
        return b == b"1"

    def float(self) -> float:
        """dlib float_details: mantissa (int64) *then* exponent (int16); value = m * 2**e."""
        if self.data[self.pos] & 0x70:
            raise DlibFormatError(f"legacy ASCII float at byte {self.pos} is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def string(self) -> str:
        n = self.int()
        return self._take(n).decode("latin-1")

    def expect_string(self, *allowed: str) -> str:
        at = self.pos
        s = self.string()
        if s not in allowed:
            raise DlibFormatError(f"expected one of {allowed} at byte {at}, found {s!r}")
        return s

    def expect_int(self, expected: int, what: str) -> None:
        at = self.pos
        v = self.int()
        if v != expected:
            raise DlibFormatError(f"{what}: expected {expected} at byte {at}, found {v}")

    def tensor(self) -> np.ndarray:
        """resizable_tensor: version 2, (n, k, nr, nc), then raw little-endian float32 data."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """alias_tensor: version 1 and a shape, no data."""
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Parsed weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvParams:
    """One dlib ``con_`` layer: weight (F, C, kh, kw) float32, bias (F,) float32."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    padding: int


@dataclass(frozen=True)
class AffineParams:
    """One dlib ``affine_`` layer (per channel): y = x * gamma + beta."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class DlibNetWeights:
    """Everything read from the ``.dat`` file, in forward order."""

    path: str
    file_size: int
    bytes_consumed: int
    convs: tuple[ConvParams, ...]
    affines: tuple[AffineParams, ...]
    fc_weight: np.ndarray  # (num_inputs, num_outputs) = (256, 128), dlib computes x @ W
    input_mean: np.ndarray  # (3,) float32, R, G, B
    input_size: tuple[int, int]  # (nr, nc)
    loss_margin: float
    loss_dist_thresh: float
    header_versions: tuple[int, ...] = field(repr=False)  # outermost (fc) -> innermost (stem conv)
    layer_tags: tuple[str, ...] = field(repr=False)  # version strings, forward order

    @property
    def num_floats(self) -> int:
        n = sum(c.weight.size + c.bias.size for c in self.convs)
        n += sum(a.gamma.size + a.beta.size for a in self.affines)
        return n + self.fc_weight.size


def _read_conv(r: _Reader, spec: tuple, in_channels: int) -> ConvParams:
    _, filters, k, stride, pad = spec
    tag = r.expect_string("con_4", "con_5", "con_6")
    params = r.tensor().reshape(-1)
    num_filters = r.int()
    nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
    if (num_filters, nr, nc, sy, sx, py, px) != (filters, k, k, stride, stride, pad, pad):
        raise DlibFormatError(
            f"conv mismatch: file has filters={num_filters} k={nr}x{nc} stride={sy},{sx} pad={py},{px}; "
            f"expected filters={filters} k={k} stride={stride} pad={pad}"
        )
    filt_shape = r.alias_tensor()
    bias_shape = r.alias_tensor()
    for _ in range(4):  # learning-rate / weight-decay multipliers (training only)
        r.float()
    use_bias = True
    if tag in ("con_5", "con_6"):
        use_bias = r.bool()
    if tag == "con_6" and r.bool():
        raise DlibFormatError("conv with fused relu (use_relu=true) is not part of this architecture")
    n_w = filters * in_channels * k * k
    if math.prod(filt_shape) != n_w or params.size != n_w + (filters if use_bias else 0):
        raise DlibFormatError(
            f"conv params size {params.size} / alias {filt_shape} do not fit {filters}x{in_channels}x{k}x{k}"
            f" (use_bias={use_bias}, bias alias {bias_shape})"
        )
    weight = params[:n_w].reshape(filters, in_channels, k, k)  # (out, in, kh, kw), as torch
    bias = params[n_w:].copy() if use_bias else np.zeros(filters, np.float32)
    return ConvParams(weight=weight.copy(), bias=bias, stride=stride, padding=pad)


def _read_affine(r: _Reader, channels: int) -> AffineParams:
    tag = r.expect_string("affine_", "affine_2", "bn_con2")
    params = r.tensor().reshape(-1)
    r.alias_tensor()  # gamma shape
    r.alias_tensor()  # beta shape
    if tag == "bn_con2":
        # dlib converts a batch-norm record to an affine in float32:
        # gamma' = gamma / sqrt(running_var + eps), beta' = beta - gamma' * running_mean.
        r.tensor()  # means (training batch stats)
        r.tensor()  # invstds
        running_means = r.tensor().reshape(-1)
        running_vars = r.tensor().reshape(-1)
        r.int()  # num_updates
        r.int()  # running_stats_window_size
        for _ in range(4):
            r.float()
        eps = np.float32(r.float())
        gamma = params[:channels] / np.sqrt(running_vars + eps)
        beta = params[channels : 2 * channels] - gamma * running_means
        gamma, beta = gamma.astype(np.float32), beta.astype(np.float32)
    else:
        mode = r.int()
        if mode != 0:
            raise DlibFormatError(f"affine mode {mode} (expected 0 = per-channel/conv mode)")
        gamma = params[:channels].copy()
        beta = params[channels : 2 * channels].copy()
        if tag == "affine_2" and r.bool():  # disabled: the layer is an identity
            gamma = np.ones(channels, np.float32)
            beta = np.zeros(channels, np.float32)
    if params.size != 2 * channels:
        raise DlibFormatError(f"affine params size {params.size}, expected {2 * channels}")
    return AffineParams(gamma=gamma, beta=beta)


def _read_pool(r: _Reader, spec: tuple) -> None:
    kind, k, stride, pad = spec
    r.expect_string(f"{kind}_2")
    got = tuple(r.int() for _ in range(6))
    if got != (k, k, stride, stride, pad, pad):
        raise DlibFormatError(f"{kind} mismatch: file has {got}, expected {(k, k, stride, stride, pad, pad)}")


def _read_fc(r: _Reader, num_inputs_expected: int) -> np.ndarray:
    tag = r.expect_string("fc_2", "fc_3")
    num_outputs = r.int()
    num_inputs = r.int()
    if (num_outputs, num_inputs) != (EMBED_DIM, num_inputs_expected):
        raise DlibFormatError(f"fc is {num_inputs}->{num_outputs}, expected {num_inputs_expected}->{EMBED_DIM}")
    params = r.tensor().reshape(-1)
    r.alias_tensor()  # weights
    r.alias_tensor()  # biases (empty)
    bias_mode = r.int()
    if bias_mode != 1:
        raise DlibFormatError(f"fc bias_mode {bias_mode}, expected 1 (fc_no_bias)")
    for _ in range(4):
        r.float()
    if tag == "fc_3":
        r.bool()  # use_bias; irrelevant with FC_NO_BIAS
    if params.size != num_inputs * num_outputs:
        raise DlibFormatError(f"fc params size {params.size}, expected {num_inputs * num_outputs}")
    return params.reshape(num_inputs, num_outputs).copy()


def _read_trailer(r: _Reader, innermost: bool) -> None:
    """Flags and (empty in shipped files) training tensors that follow every layer record."""
    for _ in range(3):  # setup_called, gradient_input_is_stale, output/grad disabled
        r.bool()
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    r.tensor()  # params_grad (v2) / grad_final (v3)
    if innermost:
        r.int()  # sample_expansion_factor


def default_model_path() -> str:
    """Location of the .dat file shipped with ``face_recognition_models``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # face_recognition_models imports the deprecated pkg_resources
        import face_recognition_models

    return face_recognition_models.face_recognition_model_location()


def parse_dlib_resnet(path: str | None = None) -> DlibNetWeights:
    """Parse dlib's serialised ResNet, consuming the file exactly to its end (cached per process)."""
    return _parse_cached(os.path.realpath(path or default_model_path()))


@functools.lru_cache(maxsize=4)
def _parse_cached(path: str) -> DlibNetWeights:
    with open(path, "rb") as fh:
        data = fh.read()
    r = _Reader(data)
    seq = _layer_sequence()

    # 1. Loss layer (outermost wrapper): version 1 + loss_metric details.
    r.expect_int(1, "add_loss_layer version")
    r.expect_string("loss_metric_2")
    margin, dist_thresh = r.float(), r.float()

    # 2. Wrapper headers, outermost -> innermost. Checking them against the architecture catches
    #    any structural mismatch before we start interpreting weights.
    headers: list[int] = []
    for i, spec in enumerate(reversed(seq)):
        expected = 1 if spec[0] in ("tag", "skip") else (3 if i == len(seq) - 1 else 2)
        at = r.pos
        v = r.int()
        if v != expected:
            raise DlibFormatError(f"header {i} ({spec[0]}) at byte {at}: version {v}, expected {expected}")
        headers.append(v)

    # 3. Input layer.
    r.expect_string("input_rgb_image_sized")
    mean = np.array([r.float(), r.float(), r.float()], dtype=np.float32)
    nr, nc = r.int(), r.int()
    if (nr, nc) != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"input size {nr}x{nc}, expected {CHIP_SIZE}x{CHIP_SIZE}")

    # 4. Layer records + trailers, innermost -> outermost (= forward order).
    convs: list[ConvParams] = []
    affines: list[AffineParams] = []
    tags: list[str] = []
    fc_weight: np.ndarray | None = None
    channels = 3
    first = True
    for spec in seq:
        kind = spec[0]
        if kind in ("tag", "skip"):
            continue  # no record of their own
        start = r.pos
        if kind == "con":
            conv = _read_conv(r, spec, channels)
            convs.append(conv)
            channels = spec[1]
        elif kind == "affine":
            affines.append(_read_affine(r, channels))
        elif kind == "relu":
            if r.expect_string("relu_", "relu_2") == "relu_2" and r.bool():
                raise DlibFormatError("disabled relu is not supported")
        elif kind in ("max_pool", "avg_pool"):
            _read_pool(r, spec)
        elif kind == "add_prev":
            r.expect_string("add_prev_")
        elif kind == "fc":
            fc_weight = _read_fc(r, channels)
        else:  # pragma: no cover - the sequence is static
            raise AssertionError(kind)
        # The version string is the first thing in every record.
        peek = _Reader(data)
        peek.pos = start
        tags.append(peek.string())
        _read_trailer(r, innermost=first)
        first = False

    if r.pos != len(data):
        raise DlibFormatError(f"parser stopped at byte {r.pos} of {len(data)}: trailing data")
    assert fc_weight is not None
    weights = DlibNetWeights(
        path=path,
        file_size=len(data),
        bytes_consumed=r.pos,
        convs=tuple(convs),
        affines=tuple(affines),
        fc_weight=fc_weight,
        input_mean=mean,
        input_size=(nr, nc),
        loss_margin=margin,
        loss_dist_thresh=dist_thresh,
        header_versions=tuple(headers),
        layer_tags=tuple(tags),
    )
    logger.info(
        "parsed %s: %d bytes, %d convs, %d affines, %d floats, input mean %s",
        path,
        len(data),
        len(convs),
        len(affines),
        weights.num_floats,
        mean.tolist(),
    )
    return weights


# --------------------------------------------------------------------------------------------
# PyTorch module
# --------------------------------------------------------------------------------------------


def _add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib add_prev: shape = elementwise max of the two; the smaller is zero-padded at the end."""
    if a.shape == b.shape:
        return a + b
    n = a.shape[0]
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    if a.shape[1:] == (c, h, w) or b.shape[1:] == (c, h, w):
        big, small = (a, b) if a.shape[1:] == (c, h, w) else (b, a)
        out = big.clone()
        out[:, : small.shape[1], : small.shape[2], : small.shape[3]] += small
        return out
    # Neither contains the other (e.g. branch has more channels, shortcut more rows/cols).
    fmt = torch.channels_last if a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((n, c, h, w), dtype=a.dtype, device=a.device, memory_format=fmt).zero_()
    out[:, : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[:, : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


def _folded_conv(conv: ConvParams, affine: AffineParams) -> nn.Conv2d:
    """Conv followed by a per-channel affine is one conv with W*gamma and b*gamma+beta."""
    f, c, k, _ = conv.weight.shape
    g64 = affine.gamma.astype(np.float64)
    w = (conv.weight.astype(np.float64) * g64[:, None, None, None]).astype(np.float32)
    b = (conv.bias.astype(np.float64) * g64 + affine.beta.astype(np.float64)).astype(np.float32)
    m = nn.Conv2d(c, f, k, stride=conv.stride, padding=conv.padding, bias=True, device="meta")
    _set_params(m, weight=w, bias=b)
    return m


def _set_params(m: nn.Module, **arrays: np.ndarray) -> None:
    """Give a module built on the meta device its real weights.

    Why: the default random init of 5.6M parameters, or ``skip_init`` (whose ``to_empty`` goes
    through torch's slow Python reference ops on first use), cost ~1 s of start-up; building on
    ``meta`` and attaching the parsed arrays costs ~10 ms, which matters for short builds.
    """
    for name, a in arrays.items():
        setattr(m, name, nn.Parameter(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), requires_grad=False))


class _ResBlock(nn.Module):
    """dlib ares / ares_down: relu(shortcut(x) (+) conv-affine-relu-conv-affine(x))."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, down: bool) -> None:
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        # No projection on the shortcut: just a 2x2/2 average pool in down blocks.
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv1(x), inplace=True)
        y = self.conv2(y)
        return F.relu(_add_prev(y, self.shortcut(x)), inplace=True)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet with each affine folded into its conv.

    ``forward`` takes already-normalised input, ``(v - input_mean[c]) / 256`` in RGB planar order,
    and returns the raw (not L2-normalised) 128-d descriptors, exactly as dlib's loss_metric does.
    """

    def __init__(self, weights: DlibNetWeights) -> None:
        super().__init__()
        convs, affines = weights.convs, weights.affines
        if len(convs) != 1 + 2 * len(BLOCKS) or len(affines) != len(convs):
            raise DlibFormatError(f"{len(convs)} convs / {len(affines)} affines do not fit the architecture")
        self.stem_conv = _folded_conv(convs[0], affines[0])
        self.stem_pool = nn.MaxPool2d(3, 2)
        self.blocks = nn.ModuleList(
            _ResBlock(
                _folded_conv(convs[1 + 2 * i], affines[1 + 2 * i]),
                _folded_conv(convs[2 + 2 * i], affines[2 + 2 * i]),
                down,
            )
            for i, (_, down) in enumerate(BLOCKS)
        )
        n_in, n_out = weights.fc_weight.shape
        self.fc = nn.Linear(n_in, n_out, bias=False, device="meta")
        _set_params(self.fc, weight=weights.fc_weight.T)
        self.register_buffer("input_mean", torch.from_numpy(weights.input_mean.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(F.relu(self.stem_conv(x), inplace=True))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def normalize(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC RGB chips -> float NCHW ``(v - mean_c) / 256`` (dlib's input layer).

        The NCHW result is a permuted view of NHWC memory, i.e. already channels_last.
        (v - mean) rounded once to float32 then /256 (exact) equals dlib's double-then-float result.
        """
        x = chips.permute(0, 3, 1, 2).to(self.input_mean.dtype)
        return (x - self.input_mean.view(1, 3, 1, 1)) / 256.0


def load_dlib_resnet(path: str | None = None) -> DlibResNet:
    """Build the eval-mode, grad-free torch module from dlib's .dat (parse is cached per path)."""
    model = DlibResNet(parse_dlib_resnet(path))
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# Batched embedder
# --------------------------------------------------------------------------------------------

_precision_lock = threading.Lock()


@contextlib.contextmanager
def _ieee_fp32_convs() -> Iterator[None]:
    """cuDNN may use TF32 for fp32 convs by default (~1e-3 relative error); dlib parity needs IEEE fp32."""
    with _precision_lock:
        conv_cfg = getattr(torch.backends.cudnn, "conv", None)
        if conv_cfg is not None and hasattr(conv_cfg, "fp32_precision"):
            old = conv_cfg.fp32_precision
            conv_cfg.fp32_precision = "ieee"
            try:
                yield
            finally:
                conv_cfg.fp32_precision = old
        else:  # older torch
            old_flag = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            try:
                yield
            finally:
                torch.backends.cudnn.allow_tf32 = old_flag


def _resolve_device(device: str) -> str:
    want = device.strip().lower()
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cpu":
        return "cpu"
    if want == "cuda" or want.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {device!r} requested but CUDA is not available in this torch build/host "
                f"(torch {torch.__version__}); use device='cpu' or 'auto'"
            )
        return want
    raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'auto'")


def _cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Weights to ``dtype`` (keeping their memory format); buffers stay float32, so the input means
    (e.g. 122.782) are not rounded to bf16's 8 bits before the normalisation."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))


class TorchEmbedder:
    """Batched descriptor: same numbers as dlib.face_recognition_model_v1.compute_face_descriptor(chip)
    with ``precision="fp32"``; ``"bf16"`` trades ~1e-3 of descriptor error for ~2x speed."""

    name = "torch"

    def __init__(
        self, device: str = "cpu", batch_size: int = 64, threads: int | None = None, precision: str = "fp32"
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device: str = _resolve_device(device)
        self.precision = resolve_precision(precision, "cpu" if self.device == "cpu" else "cuda")
        self.batch_size = int(batch_size)
        if threads is not None:
            # Process-wide in torch; only touched when the caller asks for it.
            torch.set_num_threads(int(threads))
        model = load_dlib_resnet()
        if self.device == "cpu":
            # NHWC convs are a few % faster with oneDNN on CPU; numerically identical here.
            model = model.to(memory_format=torch.channels_last)
        else:
            model = model.to(self.device)
        self._dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        if self._dtype != torch.float32:
            _cast_parameters(model, self._dtype)
        self.model = model
        logger.info(
            "TorchEmbedder on %s, %s, batch %d, %d torch threads",
            self.device,
            self.precision,
            self.batch_size,
            torch.get_num_threads(),
        )

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """uint8 (N,150,150,3) RGB dlib face chips (size 150, padding 0.25) -> float32 (N,128)."""
        chips = np.asarray(chips)
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(
                f"expected uint8 chips of shape (N,{CHIP_SIZE},{CHIP_SIZE},3), got {chips.dtype} {chips.shape}"
            )
        out = np.empty((chips.shape[0], EMBED_DIM), dtype=np.float32)
        if chips.shape[0] == 0:
            return out
        chips = np.ascontiguousarray(chips)
        cuda = self.device != "cpu"
        guard = _ieee_fp32_convs() if cuda else contextlib.nullcontext()
        with torch.inference_mode(), guard:
            for start in range(0, chips.shape[0], self.batch_size):
                batch = torch.from_numpy(chips[start : start + self.batch_size])
                if cuda:
                    batch = batch.to(self.device, non_blocking=True)
                x = self.model.normalize(batch).to(self._dtype)
                if cuda:
                    x = x.contiguous()
                out[start : start + batch.shape[0]] = self.model(x).float().cpu().numpy()
        return out
