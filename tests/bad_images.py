"""A deterministic corpus of hostile, broken and odd image uploads, generated in code at test time.

Nothing binary is committed and nothing is copied from elsewhere: every item is built here from
one real face JPEG the caller passes in (``good_jpeg``, e.g. a CelebA crop) or from scratch.
Randomness is seeded, so two calls with the same ``good_jpeg`` return byte-identical items.

    from bad_images import corpus, expected_outcomes     # tests/ is on sys.path under pytest
    items = corpus(Path("…/000001.jpg").read_bytes())   # list[BadImage], 56 items, < 1 s
    expected_outcomes()["bomb_png_20000x20000.png"]      # "refused"

Every item is small (at most ~2.3 MB, most well under 100 KB); the decompression bombs are
*valid* files that would decode to gigapixels if a decoder allowed them (the streams are built
with zlib full-flush repetition, or CCITT G4 for the TIFF, so they cost nothing to build).

``expected_outcomes()`` says what a careful upload service should do with each item:
``"decodes"`` (a real image, odd but legitimate: decode it to H×W×3 uint8) or ``"refused"``
(not an image, broken, a bomb, too small to hold a face, or a format a photo service should not
accept at all). Either way it must happen quickly (< 5 s) and without large memory growth.

Run ``python tests/bad_images.py [face.jpg]`` to push the corpus through ``indexer.faces.decode``
(each item in a forked child, with a time limit and a peak-RSS measurement) and print a table.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

DECODES = "decodes"
REFUSED = "refused"


@dataclass(frozen=True)
class BadImage:
    name: str  # unique file name; the extension is what the file pretends to be
    data: bytes
    kind: str  # short machine name, e.g. "png_bomb"
    note: str  # one-line description

    def __repr__(self) -> str:  # keep test output readable (no megabytes of bytes)
        return f"BadImage({self.name!r}, {len(self.data)} bytes, kind={self.kind!r})"


# ----------------------------------------------------------------------------- byte-level helpers


def _zlib_fill(n: int, fill: int = 0, level: int = 9, block: int = 1 << 20) -> bytes:
    """A valid zlib stream that inflates to ``n`` copies of byte ``fill``, built in O(n / block).

    One block is deflated and ended with a full flush (byte-aligned, no back-references past it),
    so the same compressed block can be repeated; a fresh final stream carries the remainder.
    """
    blk = bytes([fill]) * min(block, max(n, 1))
    q, r = divmod(n, len(blk))
    parts: list[bytes] = []
    adler = 1
    if q:
        co = zlib.compressobj(level, zlib.DEFLATED, -15)
        first = co.compress(blk) + co.flush(zlib.Z_FULL_FLUSH)
        piece = co.compress(blk) + co.flush(zlib.Z_FULL_FLUSH)
        if piece != first:  # pragma: no cover - would mean zlib kept history across a full flush
            raise AssertionError("zlib full-flush blocks differ")
        parts = [piece] * q
        for _ in range(q):
            adler = zlib.adler32(blk, adler)
    tail = zlib.compressobj(level, zlib.DEFLATED, -15)
    parts.append(tail.compress(blk[:r]) + tail.flush())
    adler = zlib.adler32(blk[:r], adler)
    return b"\x78\xda" + b"".join(parts) + struct.pack(">I", adler)


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its CRC."""
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _png_raw(
    width: int, height: int, depth: int, color_type: int, zdata: bytes, extra: tuple[bytes, ...] = ()
) -> bytes:
    """A PNG from an already-compressed IDAT stream; ``extra`` chunks go between IHDR and IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return PNG_SIG + _chunk(b"IHDR", ihdr) + b"".join(extra) + _chunk(b"IDAT", zdata) + _chunk(b"IEND", b"")


def _png_from_array(a: np.ndarray, color_type: int) -> bytes:
    """Hand-written PNG for uint8/uint16 arrays (filter 0 on every row), e.g. 16-bit RGB."""
    depth = 16 if a.dtype == np.uint16 else 8
    h, w = a.shape[:2]
    rows = a.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    return _png_raw(w, h, depth, color_type, zlib.compress(raw, 9))


def _png_insert(png: bytes, chunks: list[bytes]) -> bytes:
    """Insert chunks right after IHDR of an existing PNG."""
    at = len(PNG_SIG) + 8 + 13 + 4
    return png[:at] + b"".join(chunks) + png[at:]


def _png_chunks(png: bytes) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload length) for each chunk."""
    out, pos = [], len(PNG_SIG)
    while pos + 8 <= len(png):
        n, ctype = struct.unpack(">I4s", png[pos : pos + 8])
        out.append((ctype, pos + 8, n))
        pos += 12 + n
    return out


_TIFF_TYPES = {3: "H", 4: "I"}  # SHORT, LONG


def _tiff(
    tags: dict[int, tuple[int, list[int]]], blob: bytes, strip_offsets: list[int], strip_counts: list[int]
) -> bytes:
    """A little-endian single-IFD TIFF: header, strip data ``blob``, IFD, out-of-line values.

    ``strip_offsets`` are relative to ``blob``; several strips may share the same bytes.
    """
    tags = dict(tags)
    tags[273] = (4, [8 + o for o in strip_offsets])
    tags[279] = (4, list(strip_counts))
    body = b"II*\0" + struct.pack("<I", 0) + blob
    body += b"\0" * (len(body) & 1)
    ifd_off = len(body)
    extra_off = ifd_off + 2 + 12 * len(tags) + 4
    entries, extra = b"", b""
    for tag in sorted(tags):
        typ, vals = tags[tag]
        count = len(vals)
        raw = struct.pack("<" + _TIFF_TYPES[typ] * count, *vals)
        if len(raw) <= 4:
            field = raw.ljust(4, b"\0")
        else:
            field = struct.pack("<I", extra_off + len(extra))
            extra += raw + b"\0" * (len(raw) & 1)
        entries += struct.pack("<HHI", tag, typ, count) + field
    body = body[:4] + struct.pack("<I", ifd_off) + body[8:]
    return body + struct.pack("<H", len(tags)) + entries + b"\0\0\0\0" + extra


def _g4_all_white(height: int) -> bytes:
    """CCITT Group 4 data for ``height`` all-white rows of any width: one V0 code ('1') per row,
    then EOFB. (Checked: the same construction decodes at 64×64, 1000×777 and 2000×2000.)"""
    bits = "1" * height + "000000000001" * 2
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _fits(width: int, height: int, data: bytes = b"") -> bytes:
    """A FITS primary HDU, BITPIX 8, in 2880-byte blocks; ``data`` is padded to a block."""
    cards = [
        "SIMPLE  = {:>20}".format("T"),
        f"BITPIX  = {8:>20}",
        f"NAXIS   = {2:>20}",
        f"NAXIS1  = {width:>20}",
        f"NAXIS2  = {height:>20}",
        "END",
    ]
    head = "".join(c.ljust(80) for c in cards).encode("ascii")
    head += b" " * (-len(head) % 2880)
    return head + data + b"\0" * (-len(data) % 2880)


def _gif_1x1_frame(left: int = 0, top: int = 0, w: int = 1, h: int = 1) -> bytes:
    """An image descriptor (no local palette) + LZW data for one pixel of colour 0:
    min code size 2, codes CLEAR(4) 0 EOI(5) at 3 bits = 0x44 0x01. For w×h > 1 the frame is
    short of data (decoders fill the rest), which is fine for the bombs that use it."""
    return b"\x2c" + struct.pack("<HHHHB", left, top, w, h, 0) + b"\x02\x02\x44\x01\x00"


def _gif_header(w: int, h: int) -> bytes:
    """GIF89a header + logical screen of w×h + a 2-colour global palette (black, white)."""
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"


def _gif_sub_blocks(data: bytes) -> bytes:
    out = b"".join(bytes([len(data[i : i + 255])]) + data[i : i + 255] for i in range(0, len(data), 255))
    return out + b"\0"


def _jpeg_insert_after_soi(jpeg: bytes, segments: bytes) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segments + jpeg[2:]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= 65533, len(payload)
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def _jpeg_markers(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, segment start, segment length incl. marker) up to and including SOS."""
    out, pos = [], 2
    while pos + 4 <= len(jpeg):
        if jpeg[pos] != 0xFF:
            raise ValueError(f"not a JPEG marker at {pos}")
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        n = struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        out.append((marker, pos, n + 2))
        if marker == 0xDA:
            break
        pos += n + 2
    return out


# ----------------------------------------------------------------------------- image helpers


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _face(good_jpeg: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(good_jpeg))
    im.load()
    return im.convert("RGB")


def _alpha_mask(size: tuple[int, int]) -> Image.Image:
    """An opaque ellipse (the face) on a fully transparent background."""
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((w * 0.1, h * 0.05, w * 0.9, h * 0.95), fill=255)
    return mask


def _exif_bytes(entries: list[tuple[int, int, int, bytes]], ifd_count: int | None = None, tail: bytes = b"") -> bytes:
    """APP1 payload "Exif\\0\\0" + little-endian TIFF with IFD0 at 8. Entries are raw
    (tag, type, count, 4-byte value field); ``ifd_count`` may lie about how many follow."""
    n = len(entries) if ifd_count is None else ifd_count
    ifd = struct.pack("<H", n) + b"".join(struct.pack("<HHI", t, ty, c) + v for t, ty, c, v in entries)
    return b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + tail


# ----------------------------------------------------------------------------- the corpus

# (name, kind, expected outcome, note, builder(ctx) -> bytes). Names are unique; see corpus().
_Spec = tuple[str, str, str, str, Callable[["_Ctx"], bytes]]


class _Ctx:
    """Per-call inputs shared by the builders (the face, its JPEG, a seeded RNG per item)."""

    def __init__(self, good_jpeg: bytes):
        self.jpeg = good_jpeg
        self.face = _face(good_jpeg)
        self.face_jpeg = _save(self.face, "JPEG", quality=90)  # baseline, no EXIF, known layout
        self.face_png = _save(self.face, "PNG")

    @staticmethod
    def rng(name: str) -> random.Random:
        return random.Random(zlib.crc32(name.encode()))


def _truncated_scan(c: _Ctx) -> bytes:
    j = c.face_jpeg
    sos = [m for m in _jpeg_markers(j) if m[0] == 0xDA][-1]
    scan_start, scan_end = sos[1] + sos[2], j.rindex(b"\xff\xd9")
    return j[: (scan_start + scan_end) // 2]


def _truncated_header(c: _Ctx) -> bytes:
    j = c.face_jpeg
    sof = [m for m in _jpeg_markers(j) if m[0] in (0xC0, 0xC1, 0xC2)][0]
    return j[: sof[1] + sof[2]]  # ends right after the frame header: no Huffman tables, no scan


def _truncated_idat(c: _Ctx) -> bytes:
    ctype, start, n = [ch for ch in _png_chunks(c.face_png) if ch[0] == b"IDAT"][0]
    return c.face_png[: start + n // 2]


def _random_after_app0(c: _Ctx) -> bytes:
    app0 = _jpeg_segment(0xE0, b"JFIF\0\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    return b"\xff\xd8" + app0 + c.rng("jpeg").randbytes(8192)


def _garbage_idat(c: _Ctx) -> bytes:
    return _png_raw(64, 64, 8, 2, c.rng("idat").randbytes(4096))


def _bad_crc(c: _Ctx) -> bytes:
    p = bytearray(c.face_png)
    p[len(PNG_SIG) + 8 + 13] ^= 0xFF  # first byte of IHDR's CRC
    return bytes(p)


def _png_bomb(c: _Ctx) -> bytes:
    w = h = 20000  # 1-bit greyscale: 2500 bytes a row + filter byte 0 → 50 MB of zeros inflated
    return _png_raw(w, h, 1, 0, _zlib_fill(h * (1 + (w + 7) // 8)))


def _tiff_bomb(c: _Ctx) -> bytes:
    w = h = 60000  # bilevel, CCITT G4 (compression 4), one strip of all-white rows: 7.5 KB
    data = _g4_all_white(h)
    tags = {256: (4, [w]), 257: (4, [h]), 258: (3, [1]), 259: (3, [4]), 262: (3, [0]), 277: (3, [1]), 278: (4, [h])}
    return _tiff(tags, data, [0], [len(data)])


def _jpeg_bomb(c: _Ctx) -> bytes:
    j = bytearray(c.face_jpeg)
    sof = [m for m in _jpeg_markers(bytes(j)) if m[0] in (0xC0, 0xC1, 0xC2)][0]
    j[sof[1] + 5 : sof[1] + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    return bytes(j)


def _gif_screen_bomb(c: _Ctx) -> bytes:
    return _gif_header(65535, 65535) + _gif_1x1_frame() + b"\x3b"


def _gif_frame_bomb(c: _Ctx) -> bytes:
    return _gif_header(16, 16) + _gif_1x1_frame(0, 0, 65535, 65535) + b"\x3b"


def _png_text_bomb(c: _Ctx) -> bytes:
    itxt = b"Description\0" + b"\x01\x00" + b"\0" + b"\0" + _zlib_fill(64 << 20, ord("A"))
    return _png_insert(c.face_png, [_chunk(b"iTXt", itxt)])


def _near_limit_rgba(c: _Ctx) -> bytes:
    w = h = 6000  # 36 Mpx, under faces.MAX_PIXELS (40 Mpx); fully transparent black
    return _png_raw(w, h, 8, 6, _zlib_fill(h * (1 + 4 * w)))


def _near_limit_jpeg(c: _Ctx) -> bytes:
    """A valid 7360×4912 (36 Mpx, a real camera size) baseline 4:4:4 JPEG, uniform grey.

    Tables and headers come from Pillow's own encoding of a small grey image (standard Huffman
    tables); the scan is hand-made: every MCU is three blocks with DC difference 0 and an
    immediate EOB: luma "00"+"1010", chroma "00"+"00" twice = 14 bits, so 4 MCUs = 7 bytes."""
    w, h = 7360, 4912
    j = bytearray(_save(Image.new("RGB", (16, 16), (128, 128, 128)), "JPEG", quality=90, subsampling=0))
    marks = _jpeg_markers(bytes(j))
    sof = [m for m in marks if m[0] == 0xC0][0]
    j[sof[1] + 5 : sof[1] + 9] = struct.pack(">HH", h, w)
    sos = marks[-1]
    assert sos[0] == 0xDA
    mcus = (w // 8) * (h // 8)
    assert mcus % 4 == 0
    return bytes(j[: sos[1] + sos[2]]) + bytes.fromhex("2800a002800a00") * (mcus // 4) + b"\xff\xd9"


def _near_limit_gray16(c: _Ctx) -> bytes:
    w = h = 6000
    return _png_raw(w, h, 16, 0, _zlib_fill(h * (1 + 2 * w)))


def _near_limit_float(c: _Ctx) -> bytes:
    w = h = 6000
    rps = 100  # 60 deflate strips of 100 rows, all sharing the same compressed bytes
    z = _zlib_fill(w * 4 * rps)
    tags = {
        256: (4, [w]),
        257: (4, [h]),
        258: (3, [32]),
        259: (3, [8]),
        262: (3, [1]),
        277: (3, [1]),
        278: (4, [rps]),
        339: (3, [3]),
    }
    return _tiff(tags, z, [0] * (h // rps), [len(z)] * (h // rps))


def _tiff_many_pages(c: _Ctx) -> bytes:
    """20,000 IFDs of 16×16 8-bit grey, all pointing at the same 256-byte strip (2.3 MB)."""
    n, w, h = 20000, 16, 16
    strip = bytes(range(256))
    out = bytearray(b"II*\0" + struct.pack("<I", 8 + len(strip)) + strip)
    ifd_size = 2 + 12 * 9 + 4
    for i in range(n):
        nxt = len(out) + ifd_size if i < n - 1 else 0
        tags = [
            (256, 3, 1, w),
            (257, 3, 1, h),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, 8),
            (277, 3, 1, 1),
            (278, 3, 1, h),
            (279, 4, 1, len(strip)),
        ]
        out += struct.pack("<H", 9) + b"".join(struct.pack("<HHII", *t) for t in tags)
        out += struct.pack("<I", nxt)
    return bytes(out)


def _gif_many_frames(c: _Ctx) -> bytes:
    return _gif_header(16, 16) + _gif_1x1_frame() * 150_000 + b"\x3b"


def _strip_png(w: int, h: int) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    a = ((x * 7 + y * 3) % 256).astype(np.uint8)
    return _save(Image.fromarray(a), "PNG")


def _gray16(c: _Ctx) -> bytes:
    g = np.asarray(c.face.convert("L"), dtype=np.uint16) * 257
    g = g + (np.arange(g.size, dtype=np.uint16).reshape(g.shape) % 200)  # use the low bits too
    im = Image.fromarray(g.astype(np.uint16))
    assert im.mode == "I;16"
    return _save(im, "PNG")


def _rgb16(c: _Ctx) -> bytes:
    return _png_from_array(np.asarray(c.face, dtype=np.uint16) * 257, color_type=2)


def _rgba16(c: _Ctx) -> bytes:
    rgb = np.asarray(c.face, dtype=np.uint16) * 257
    a = np.asarray(_alpha_mask(c.face.size), dtype=np.uint16)[..., None] * 257
    return _png_from_array(np.concatenate([rgb, a], axis=-1), color_type=6)


def _palette(c: _Ctx) -> bytes:
    return _save(c.face.quantize(colors=64), "PNG")


def _palette_trns(c: _Ctx) -> bytes:
    p = c.face.quantize(colors=64)
    return _save(p, "PNG", transparency=p.getpixel((0, 0)))


def _rgba(c: _Ctx) -> bytes:
    rgba = c.face.convert("RGBA")
    mask = _alpha_mask(c.face.size)
    rgba.putalpha(mask)
    black = Image.new("RGBA", c.face.size, (0, 0, 0, 0))  # transparent pixels carry black RGB
    return _save(Image.composite(rgba, black, mask), "PNG")


def _la(c: _Ctx) -> bytes:
    la = c.face.convert("LA")
    la.putalpha(_alpha_mask(c.face.size))
    return _save(la, "PNG")


def _float_tiff(c: _Ctx, nan: bool = False) -> bytes:
    f = np.asarray(c.face.convert("L"), dtype=np.float32) / 255.0 * 3.5 - 1.25  # not in [0, 255]
    if nan:
        f = f.copy()
        f[:4, :] = np.nan
        f[-4:, :] = np.inf
        f[:, :2] = -np.inf
    im = Image.fromarray(f)
    return _save(im, "TIFF")


def _int32_tiff(c: _Ctx) -> bytes:
    i = np.asarray(c.face.convert("L"), dtype=np.int32) * 1000 - 20000  # beyond 16 bits, negative
    return _save(Image.fromarray(i), "TIFF")


def _noise(size: tuple[int, int], seed: str) -> Image.Image:
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _animated_gif(c: _Ctx) -> bytes:
    f = c.face
    frames = [
        f,
        f.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        Image.new("RGB", f.size, (128, 128, 128)),
        _noise(f.size, "gif"),
    ]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _apng(c: _Ctx) -> bytes:
    f = c.face
    frames = [f, f.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", f.size, (40, 200, 40))]
    data = _save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert b"acTL" in data
    return data


def _exif_rot6(c: _Ctx) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(c.face, "JPEG", quality=90, exif=exif.tobytes())


def _exif_corrupt(c: _Ctx) -> bytes:
    le = lambda v: struct.pack("<I", v)  # noqa: E731
    entries = [
        (0x010F, 2, 0x7FFFFFFF, le(0x7FFFFF00)),  # Make: 2 GB of ASCII far past the segment
        (0x0112, 2, 16, le(0xFFFFFFF0)),  # Orientation with the wrong type and a bad offset
        (0x8769, 4, 1, le(0x7FFFFFF0)),  # Exif IFD pointer past the end
        (0x8825, 4, 1, le(8)),  # GPS IFD pointer back to IFD0 (a loop)
        (0xA005, 4, 1, le(2)),  # Interop IFD pointer into the TIFF header
    ]
    payload = _exif_bytes(entries, ifd_count=0x0400)  # claims 1024 entries, has 5
    return _jpeg_insert_after_soi(c.face_jpeg, _jpeg_segment(0xE1, payload))


def _exif_huge(c: _Ctx) -> bytes:
    le = lambda v: struct.pack("<I", v)  # noqa: E731
    # 5,000 entries of unknown tags, each claiming 1 G LONGs at an offset past the segment, then
    # a max-size MakerNote blob; the segment is the largest JPEG allows (64 KB), repeated 16×.
    entries = [(0xC000 + i, 4, 0x3FFFFFFF, le(0x7FFF0000 + i)) for i in range(5000)]
    head = _exif_bytes(entries)
    payload = head + b"\xab" * (65533 - len(head))
    seg = _jpeg_segment(0xE1, payload)
    return _jpeg_insert_after_soi(c.face_jpeg, seg * 16)


def _jpeg_zip(c: _Ctx) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("readme.txt", (2020, 1, 1, 0, 0, 0)), "this JPEG is also a ZIP archive\n")
        z.writestr(zipfile.ZipInfo("index.html", (2020, 1, 1, 0, 0, 0)), "<script>alert(1)</script>\n")
    out = c.face_jpeg + buf.getvalue()
    assert zipfile.is_zipfile(io.BytesIO(out))
    return out


def _gif_js_html(c: _Ctx) -> bytes:
    """GIF89a whose screen-width bytes are ``/*``: the file is a valid GIF (10799 px wide screen,
    the face at the left) and also valid JavaScript (``GIF89a/* …binary… */=1;…``); a comment
    extension near the start carries HTML for content sniffers."""
    html = b"<html><body><script>console.log('gif+html polyglot')</script></body></html>"
    js = b"*/=1;console.log('gif+js polyglot');//"
    for colors in (255, 200, 128, 100, 64, 48, 32, 24, 16, 12, 8):
        gif = _save(c.face.quantize(colors=colors), "GIF")
        packed = gif[10]
        gct_len = 3 * (2 << (packed & 7)) if packed & 0x80 else 0
        pos = 13 + gct_len
        while gif[pos] == 0x21:  # skip Pillow's extensions, keep the image descriptor onwards
            pos += 2
            while gif[pos]:
                pos += gif[pos] + 1
            pos += 1
        assert gif[pos] == 0x2C
        out = b"GIF89a/*" + gif[8:13] + gif[13 : 13 + gct_len] + b"\x21\xfe" + _gif_sub_blocks(html) + gif[pos:]
        if b"*/" not in out[8:]:
            return out + js
    raise RuntimeError("could not build a GIF without '*/' in its body")  # pragma: no cover


def _huge_text(c: _Ctx) -> bytes:
    text = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 35088)[:2_000_000]
    return _png_insert(c.face_png, [_chunk(b"tEXt", b"Comment\0" + text)])


SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="178" height="218" viewBox="0 0 178 218">
  <rect width="178" height="218" fill="#ddd"/>
  <ellipse cx="89" cy="109" rx="60" ry="80" fill="#e0b090"/>
  <script>alert(document.domain)</script>
</svg>
"""

PDF = b"""%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 178 218] >> endobj
trailer << /Root 1 0 R >>
%%EOF
"""

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 178 218
%%EndComments
newpath 20 20 moveto 158 198 lineto stroke
showpage
%%EOF
"""


def _fits_small(c: _Ctx) -> bytes:
    g = c.face.convert("L")
    return _fits(g.width, g.height, g.transpose(Image.Transpose.FLIP_TOP_BOTTOM).tobytes())


def _xbm(c: _Ctx) -> bytes:
    return _save(c.face.convert("1"), "XBM")


def _ico_size_lie(c: _Ctx) -> bytes:
    w = h = 2048  # the directory says 16×16; the embedded PNG is 2048×2048 (4.2 Mpx)
    png = _png_raw(w, h, 8, 6, _zlib_fill(h * (1 + 4 * w)))
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


_SPECS: list[_Spec] = [
    # --- not images / broken files
    ("empty.jpg", "empty", REFUSED, "zero bytes", lambda c: b""),
    (
        "text_file.txt",
        "text",
        REFUSED,
        "a plain UTF-8 text file",
        lambda c: "Not an image. Ceci n'est pas une image. 这不是图片。\n".encode() * 20,
    ),
    (
        "truncated_scan.jpg",
        "truncated_jpeg",
        REFUSED,
        "face JPEG cut half-way through the entropy-coded scan data (no EOI)",
        _truncated_scan,
    ),
    (
        "truncated_header.jpg",
        "truncated_jpeg_header",
        REFUSED,
        "face JPEG cut right after the SOF frame header (no Huffman tables, no scan)",
        _truncated_header,
    ),
    ("truncated_idat.png", "truncated_png", REFUSED, "face PNG cut half-way through its IDAT chunk", _truncated_idat),
    (
        "random_after_app0.jpg",
        "jpeg_random_body",
        REFUSED,
        "JPEG SOI + JFIF APP0, then 8 KB of random bytes",
        _random_after_app0,
    ),
    (
        "random_after_signature.png",
        "png_random_body",
        REFUSED,
        "PNG signature, then 8 KB of random bytes",
        lambda c: PNG_SIG + c.rng("png").randbytes(8192),
    ),
    (
        "garbage_idat.png",
        "png_bad_zlib",
        REFUSED,
        "valid IHDR (64×64 RGB) and chunk CRCs, but the IDAT is random bytes, not zlib",
        _garbage_idat,
    ),
    ("bad_crc.png", "png_bad_crc", REFUSED, "face PNG with a corrupted IHDR CRC", _bad_crc),
    # --- decompression bombs (all valid files)
    (
        "bomb_png_20000x20000.png",
        "png_bomb",
        REFUSED,
        "valid 1-bit greyscale PNG, 20000×20000 (400 Mpx), IDAT = zlib of 50 MB of zero rows",
        _png_bomb,
    ),
    (
        "bomb_tiff_60000x60000.tif",
        "tiff_bomb",
        REFUSED,
        "valid bilevel TIFF, 60000×60000 (3.6 Gpx), one CCITT G4 strip of all-white rows",
        _tiff_bomb,
    ),
    (
        "bomb_fits_60000x60000.fits",
        "fits_bomb",
        REFUSED,
        "FITS header (2880-byte block), BITPIX 8, NAXIS1=NAXIS2=60000, no data",
        lambda c: _fits(60000, 60000),
    ),
    (
        "bomb_gif_screen_65535x65535.gif",
        "gif_screen_bomb",
        REFUSED,
        "GIF whose logical screen is 65535×65535, holding one 1×1 frame",
        _gif_screen_bomb,
    ),
    (
        "bomb_gif_frame_65535x65535.gif",
        "gif_frame_bomb",
        REFUSED,
        "GIF with a 16×16 screen whose first frame descriptor is 65535×65535",
        _gif_frame_bomb,
    ),
    (
        "bomb_jpeg_65000x65000.jpg",
        "jpeg_bomb",
        REFUSED,
        "face JPEG with its SOF dimensions patched to 65000×65000",
        _jpeg_bomb,
    ),
    (
        "bomb_png_itxt_64mb.png",
        "png_text_bomb",
        REFUSED,
        "face PNG plus a compressed iTXt chunk that inflates to 64 MB of 'A'",
        _png_text_bomb,
    ),
    # --- legal pixel counts that are expensive to decode (36 Mpx < MAX_PIXELS = 40 Mpx)
    (
        "near_limit_rgba_6000x6000.png",
        "near_limit_rgba",
        DECODES,
        "valid 6000×6000 RGBA PNG (36 Mpx, fully transparent), ~140 KB",
        _near_limit_rgba,
    ),
    (
        "near_limit_rgb_7360x4912.jpg",
        "near_limit_jpeg",
        DECODES,
        "valid 7360×4912 baseline JPEG (36 Mpx camera size, uniform grey), hand-made 1 MB scan",
        _near_limit_jpeg,
    ),
    (
        "near_limit_gray16_6000x6000.png",
        "near_limit_gray16",
        DECODES,
        "valid 6000×6000 16-bit greyscale PNG (36 Mpx, black), ~70 KB",
        _near_limit_gray16,
    ),
    (
        "near_limit_float_6000x6000.tif",
        "near_limit_float",
        DECODES,
        "valid 6000×6000 float32 TIFF (36 Mpx, zeros), 60 deflate strips sharing one 2 KB block",
        _near_limit_float,
    ),
    (
        "many_pages.tif",
        "tiff_many_ifds",
        DECODES,
        "valid TIFF with 20,000 pages (IFDs) of 16×16 grey; only page 0 is needed",
        _tiff_many_pages,
    ),
    (
        "many_frames.gif",
        "gif_many_frames",
        DECODES,
        "valid 16×16 GIF with 150,000 1×1 frames; only frame 0 is needed",
        _gif_many_frames,
    ),
    # --- extreme shapes
    (
        "aspect_1x10000.png",
        "aspect_tall_1px",
        REFUSED,
        "valid 1×10000 greyscale PNG (too thin for a face)",
        lambda c: _strip_png(1, 10000),
    ),
    (
        "aspect_10000x1.png",
        "aspect_wide_1px",
        REFUSED,
        "valid 10000×1 greyscale PNG (too thin for a face)",
        lambda c: _strip_png(10000, 1),
    ),
    (
        "aspect_16x10000.png",
        "aspect_tall",
        DECODES,
        "valid 16×10000 greyscale PNG (minimum side exactly 16)",
        lambda c: _strip_png(16, 10000),
    ),
    (
        "tiny_8x8.png",
        "too_small",
        REFUSED,
        "valid 8×8 PNG (below MIN_SIDE)",
        lambda c: _save(c.face.resize((8, 8)), "PNG"),
    ),
    # --- real but odd formats and modes (all should decode)
    ("face_gray16.png", "png_gray16", DECODES, "face as 16-bit greyscale PNG (Pillow mode I;16)", _gray16),
    ("face_rgb16.png", "png_rgb16", DECODES, "face as 16-bit-per-channel RGB PNG (hand-written)", _rgb16),
    ("face_rgba16.png", "png_rgba16", DECODES, "face as 16-bit RGBA PNG, transparent outside an ellipse", _rgba16),
    ("face_palette.png", "png_palette", DECODES, "face as 64-colour palette (P) PNG", _palette),
    (
        "face_palette_trns.png",
        "png_palette_transparency",
        DECODES,
        "face as palette PNG with a tRNS transparent index",
        _palette_trns,
    ),
    (
        "face_rgba.png",
        "png_rgba",
        DECODES,
        "face as RGBA PNG, background fully transparent (black RGB under alpha 0)",
        _rgba,
    ),
    ("face_la.png", "png_la", DECODES, "face as grey+alpha (LA) PNG, transparent background", _la),
    ("face_1bit.png", "png_1bit", DECODES, "face dithered to a 1-bit PNG", lambda c: _save(c.face.convert("1"), "PNG")),
    ("face_float.tif", "tiff_float", DECODES, "face as float32 TIFF (mode F), values in [-1.25, 2.25]", _float_tiff),
    (
        "face_float_nan.tif",
        "tiff_float_nan",
        DECODES,
        "float32 TIFF face with NaN, +inf and -inf border pixels",
        lambda c: _float_tiff(c, nan=True),
    ),
    (
        "face_int32.tif",
        "tiff_int32",
        DECODES,
        "face as 32-bit signed int TIFF (mode I), values beyond 16 bits",
        _int32_tiff,
    ),
    (
        "face_cmyk.jpg",
        "jpeg_cmyk_adobe",
        DECODES,
        "face as CMYK JPEG (Adobe APP14, inverted CMYK)",
        lambda c: _save(c.face.convert("CMYK"), "JPEG", quality=90),
    ),
    (
        "face_gray.jpg",
        "jpeg_gray",
        DECODES,
        "face as single-channel greyscale JPEG",
        lambda c: _save(c.face.convert("L"), "JPEG", quality=90),
    ),
    (
        "face_progressive.jpg",
        "jpeg_progressive",
        DECODES,
        "face as progressive JPEG",
        lambda c: _save(c.face, "JPEG", quality=90, progressive=True),
    ),
    ("face.webp", "webp", DECODES, "face as lossy WebP", lambda c: _save(c.face, "WEBP", quality=85)),
    ("face.bmp", "bmp", DECODES, "face as 24-bit BMP", lambda c: _save(c.face, "BMP")),
    (
        "face_animated.gif",
        "gif_animated",
        DECODES,
        "4-frame animated GIF: face, mirrored face, grey, noise (face is frame 0)",
        _animated_gif,
    ),
    ("face_animated.png", "apng", DECODES, "3-frame APNG: face, mirrored face, green (face is frame 0)", _apng),
    (
        "face_exif_orientation6.jpg",
        "jpeg_exif_rotate",
        DECODES,
        "face JPEG with EXIF Orientation=6 (decoded image must come out rotated 90° clockwise: H and W swap)",
        _exif_rot6,
    ),
    (
        "face_exif_corrupt.jpg",
        "jpeg_exif_corrupt",
        DECODES,
        "face JPEG with a corrupt EXIF APP1 (lying entry count, bad offsets/types, IFD pointer loop)",
        _exif_corrupt,
    ),
    (
        "face_exif_huge.jpg",
        "jpeg_exif_huge",
        DECODES,
        "face JPEG with 16 max-size (64 KB) EXIF APP1 segments, 5,000 entries claiming 4 GB each",
        _exif_huge,
    ),
    # --- polyglots and wrong types
    (
        "face_with_zip.jpg",
        "polyglot_jpeg_zip",
        DECODES,
        "valid face JPEG with a ZIP archive appended (also a valid ZIP); decoders ignore trailing bytes",
        _jpeg_zip,
    ),
    (
        "gif_js_html_polyglot.gif",
        "polyglot_gif_js_html",
        DECODES,
        "valid GIF (10799-px-wide screen, face at left) that is also valid JavaScript and carries HTML",
        _gif_js_html,
    ),
    ("face_huge_text.png", "png_huge_text", DECODES, "face PNG with a 2 MB tEXt chunk before IDAT", _huge_text),
    ("svg_named.png", "svg_as_png", REFUSED, "an SVG (XML, with a <script>) uploaded under a .png name", lambda c: SVG),
    ("document.pdf", "pdf", REFUSED, "a minimal one-page PDF", lambda c: PDF),
    (
        "drawing.eps",
        "eps",
        REFUSED,
        "Encapsulated PostScript: Pillow identifies it and would run Ghostscript to rasterise it",
        lambda c: EPS,
    ),
    ("face.xbm", "xbm", REFUSED, "face as XBM: C source text that Pillow decodes as an image", _xbm),
    ("face.fits", "fits", REFUSED, "face as a small valid FITS file (astronomy format, BITPIX 8)", _fits_small),
    (
        "icon_size_lie.ico",
        "ico_size_lie",
        REFUSED,
        "ICO whose directory says 16×16 but whose embedded PNG is 2048×2048",
        _ico_size_lie,
    ),
]


def expected_outcomes() -> dict[str, str]:
    """name → ``"decodes"`` or ``"refused"``: what a careful face-upload service should do.

    Policy behind it: bombs, broken files and non-images are refused; images whose smaller side is
    under 16 px are refused (no face can be found); real-but-odd photo formats (16-bit, palette,
    alpha, CMYK, float, animated, EXIF-rotated, with junk metadata) decode; formats a photo
    service has no reason to accept (EPS, XBM, FITS, ICO) are refused by an allow-list.
    Polyglots: a valid image with trailing bytes (JPEG+ZIP) or with HTML/JS inside (GIF/JS)
    decodes — only the decoded pixels may be used or stored, never the uploaded bytes; an SVG or
    PDF under an image name is refused. Metadata bombs: a 2 MB tEXt is legal and decodes; an
    iTXt that inflates past Pillow's 1 MB text limit is refused by Pillow (safe).
    """
    return {name: expect for name, _kind, expect, _note, _build in _SPECS}


def corpus(good_jpeg: bytes) -> list[BadImage]:
    """Build every item (deterministic for a given ``good_jpeg``)."""
    ctx = _Ctx(good_jpeg)
    out = [BadImage(name, bytes(build(ctx)), kind, note) for name, kind, _e, note, build in _SPECS]
    names = [b.name for b in out]
    assert len(set(names)) == len(names), "duplicate names"
    return out


# ----------------------------------------------------------------------------- decoder check


def _vm(field: str) -> int:
    """A VmXXX value from /proc/self/status in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _decode_child(item: BadImage, conn, max_pixels: int | None) -> None:  # pragma: no cover - child
    import resource
    import time

    from indexer import faces

    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    rss0 = _vm("VmRSS")
    try:  # reset the peak-RSS counter so VmHWM measures this decode alone
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak = lambda: _vm("VmHWM")  # noqa: E731
    except OSError:
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    t0 = time.perf_counter()
    try:
        arr = faces.decode(item.data, **kw)
        ok = isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
        res = {
            "outcome": DECODES if ok else "bad_array",
            "detail": f"{arr.shape} {arr.dtype}" if isinstance(arr, np.ndarray) else repr(type(arr)),
        }
    except faces.Unreadable as e:
        res = {"outcome": REFUSED, "detail": str(e)}
    except BaseException as e:  # noqa: BLE001 - anything else is a decoder bug
        res = {"outcome": "exception", "detail": f"{type(e).__name__}: {e}"[:300]}
    res["seconds"] = time.perf_counter() - t0
    res["rss_growth"] = max(0, peak() - rss0)
    conn.send(res)
    conn.close()


def check_decoder(items: list[BadImage], timeout_s: float = 30.0, max_pixels: int | None = None) -> list[dict]:
    """Run ``indexer.faces.decode`` on each item in a forked child; one dict per item with
    name, kind, bytes, expected, outcome (decodes / refused / exception / bad_array / timeout /
    crashed), detail, seconds and rss_growth (peak RSS above the child's start, bytes)."""
    import multiprocessing as mp
    import time

    ctx = mp.get_context("fork")
    expect = expected_outcomes()
    rows = []
    for item in items:
        parent, child = ctx.Pipe(duplex=False)
        t0 = time.perf_counter()
        p = ctx.Process(target=_decode_child, args=(item, child, max_pixels))
        p.start()
        child.close()
        res = None
        if parent.poll(timeout_s):
            try:
                res = parent.recv()
            except EOFError:
                res = None
        p.join(5 if res is not None else 0.1)
        if p.is_alive():
            p.kill()
            p.join()
        if res is None:
            res = {
                "outcome": "timeout" if time.perf_counter() - t0 >= timeout_s else "crashed",
                "detail": f"exit code {p.exitcode}",
                "seconds": time.perf_counter() - t0,
                "rss_growth": 0,
            }
        rows.append(
            {
                "name": item.name,
                "kind": item.kind,
                "bytes": len(item.data),
                "expected": expect.get(item.name, "?"),
                **res,
            }
        )
    return rows


def problems(row: dict, max_seconds: float = 5.0, max_rss: int = 500 << 20) -> list[str]:
    """What is wrong with one ``check_decoder`` row (empty when it is fine)."""
    out = []
    if row["outcome"] not in (DECODES, REFUSED):
        out.append(row["outcome"])
    elif row["outcome"] != row["expected"]:
        out.append(f"expected {row['expected']}")
    if row["seconds"] > max_seconds:
        out.append(f"slow ({row['seconds']:.1f} s)")
    if row["rss_growth"] > max_rss:
        out.append(f"memory (+{row['rss_growth'] >> 20} MB)")
    return out


def _main(argv: list[str]) -> int:  # pragma: no cover - manual tool
    import os
    import resource
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    if len(argv) > 1:
        face = Path(argv[1])
    else:
        data = Path(os.environ.get("FACEMEM_DATA", repo.parent / "shared" / "data"))
        face = data / "celeba10k" / "img_align_celeba" / "000001.jpg"
    t0 = time.perf_counter()
    items = corpus(face.read_bytes())
    print(
        f"corpus: {len(items)} items, {sum(len(i.data) for i in items):,} bytes, "
        f"built in {time.perf_counter() - t0:.2f} s from {face}"
    )
    import indexer.faces  # noqa: F401 - imported before forking, so children share it

    rows = check_decoder(items)
    bad = 0
    for r in rows:
        p = problems(r)
        bad += bool(p)
        print(
            f"{r['name']:34} {r['kind']:24} {r['bytes']:>9,} {r['expected']:8} {r['outcome']:9} "
            f"{r['seconds']:6.2f}s {r['rss_growth'] >> 20:5d}MB  {'!! ' + ', '.join(p) if p else ''}  "
            f"{r['detail'][:110]}"
        )
    print(f"{bad} item(s) with problems; parent peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB")
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    raise SystemExit(_main(sys.argv))
