"""Converts llama2.c fp32 checkpoints into storybot's quantized model files (q8_0, q4_0).

File layout (version 1, little-endian; native/src/model_quant.c reads it):

    header, 256 bytes
       0  4s   magic b"SBQM"
       4  u32  version (1)
       8  8s   architecture b"llama2\\0\\0"
      16  u32  format: 1 = q8_0, 2 = q4_0
      20  u32  group size (32 columns share one scale)
      24  u32  rows per block (32)
      28  u32  tensor alignment in bytes (64)
      32  7i   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
      60  u32  shared classifier (1: the classifier is the token embedding)
      64  32s  sha256 of the source checkpoint
      96  u64  file size in bytes
     104       zeros up to 256
    tensors, each starting on a 64-byte boundary, zero padding between:
      rms_att (L, dim) f32, rms_ffn (L, dim) f32, rms_final (dim,) f32,
      token embedding, then per layer wq, wk, wv, wo, w1, w2, w3, then the classifier
      unless shared; each quantized matrix is its data then its scales.

A quantized matrix (rows, cols) is cut into blocks of 32 rows (the last one padded with
zero rows) and groups of 32 columns. Block b, group g holds, for q8_0, 32 x 32 int8
stored column by column: byte [j][r] is row 32b+r, column 32g+j; for q4_0, 16 x 32 bytes,
byte [p][r] holding columns 2p (low nibble) and 2p+1 (high nibble) of row 32b+r as
q + 8. Scales: fp32 [block][group][32 rows], w = q * scale. A vector unit thus reads one
column of 32 rows with one load and multiplies it by one activation; no row needs a
horizontal sum.

q8_0: scale = max|w| / 127, q = round(w / scale) in [-127, 127].
q4_0: q = round(w / scale) in [-8, 7], the scale chosen per group among max_w / k
(max_w: the weight of largest magnitude, signed) to minimize the squared error.
"""
from __future__ import annotations

import hashlib
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MAGIC = b"SBQM"
VERSION = 1
ARCH = b"llama2\0\0"
FORMATS = {"q8_0": 1, "q4_0": 2}
GROUP = 32
ROWS = 32
ALIGN = 64
HEADER_SIZE = 256
_HEADER = struct.Struct("<4sI8sIIII7iI32sQ")
CONFIG_NAMES = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                "seq_len")


class FormatError(ValueError):
    """A file is not what it claims to be, or cannot be quantized."""


@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared: bool

    @property
    def kv_dim(self) -> int:
        return self.dim // self.n_heads * self.n_kv_heads

    def ints(self) -> Tuple[int, ...]:
        return (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads,
                self.vocab_size, self.seq_len)


@dataclass(frozen=True)
class Header:
    format: str
    group_size: int
    config: Config
    source_sha256: str
    file_size: int


# ----------------------------------------------------------------------------
# llama2.c v0 checkpoints

def read_llama2c(path) -> Tuple[Config, Dict[str, "object"]]:
    """Config and fp32 tensors (numpy views of a memory map) of a llama2.c v0 file."""
    import numpy as np

    path = Path(path)
    size = path.stat().st_size
    if size < 28:
        raise FormatError(f"{path} is {size} bytes, shorter than a llama2.c header")
    with open(path, "rb") as f:
        h = struct.unpack("<7i", f.read(28))
    if h[0] == struct.unpack("<i", MAGIC)[0] or h[0] == 0x616B3432:
        raise FormatError(f"{path} is already quantized; give the fp32 checkpoint")
    if min(h[:5]) <= 0 or h[6] <= 0 or h[5] == 0 or h[0] % h[3] or h[3] % h[4]:
        raise FormatError(f"{path}: header {h} is not a llama2.c checkpoint's")
    c = Config(h[0], h[1], h[2], h[3], h[4], abs(h[5]), h[6], h[5] > 0)
    d, hid, L, v, kv, hs = c.dim, c.hidden_dim, c.n_layers, c.vocab_size, c.kv_dim, c.dim // c.n_heads
    shapes = [("token_embedding", (v, d)), ("rms_att", (L, d)), ("wq", (L, d, d)),
              ("wk", (L, kv, d)), ("wv", (L, kv, d)), ("wo", (L, d, d)), ("rms_ffn", (L, d)),
              ("w1", (L, hid, d)), ("w2", (L, d, hid)), ("w3", (L, hid, d)),
              ("rms_final", (d,)), ("rope", (c.seq_len, hs))]
    if not c.shared:
        shapes.append(("wcls", (v, d)))
    n = sum(int(np.prod(s)) for _, s in shapes)
    if size != 28 + 4 * n:
        raise FormatError(f"{path} is {size} bytes but its header implies {28 + 4 * n}")
    flat = np.memmap(path, dtype="<f4", mode="r", offset=28, shape=(n,))
    tensors, at = {}, 0
    for name, shape in shapes:
        k = int(np.prod(shape))
        tensors[name] = flat[at:at + k].reshape(shape)
        at += k
    if c.shared:
        tensors["wcls"] = tensors["token_embedding"]
    return c, tensors


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------
# quantization (numpy); the library's loaders read exactly these bytes

def quantize_q8(w):
    """(rows, cols) fp32 -> int8 q (rows, cols), fp32 scales (rows, cols / 32)."""
    import numpy as np

    g = w.astype(np.float32).reshape(w.shape[0], -1, GROUP)
    scale = (np.abs(g).max(axis=2) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(g / safe[:, :, None]).astype(np.int8)
    return q.reshape(w.shape), scale


# q4_0 scale candidates, as divisors of each group's largest-magnitude weight: -8 maps it
# to the level that has no positive twin, the others trade its error for the rest's.
Q4_DIVISORS = (-8.0, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, 7.0, 7.25, 7.5)


def quantize_q4(w):
    """(rows, cols) fp32 -> q in [-8, 7] (int8 array), fp32 scales (rows, cols / 32).

    Each group of 32 takes, among scales max_w / k for k in Q4_DIVISORS (max_w the
    weight of largest magnitude, with its sign), the one with the least squared error."""
    import numpy as np

    g = w.astype(np.float32).reshape(w.shape[0], -1, GROUP)
    idx = np.abs(g).argmax(axis=2)[:, :, None]
    peak = np.take_along_axis(g, idx, axis=2)[:, :, 0]
    best_q = np.zeros(g.shape, np.int8)
    best_s = np.zeros(peak.shape, np.float32)
    best_err = np.full(peak.shape, np.inf)
    for k in Q4_DIVISORS:
        scale = (peak / np.float32(k)).astype(np.float32)
        safe = np.where(scale != 0, scale, np.float32(1))
        q = np.clip(np.rint(g / safe[:, :, None]), -8, 7)
        err = ((g - q * scale[:, :, None]) ** 2).sum(axis=2)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, scale, best_s)
        best_q = np.where(better[:, :, None], q.astype(np.int8), best_q)
    return best_q.reshape(w.shape), best_s


def pack_blocks(q, scale, fmt: str) -> Tuple[bytes, bytes]:
    """q (rows, cols), scales (rows, groups) -> the file's data and scale bytes."""
    import numpy as np

    rows, cols = q.shape
    nb, ng = -(-rows // ROWS), cols // GROUP
    qp = np.zeros((nb * ROWS, cols), np.int8)
    qp[:rows] = q
    sp = np.zeros((nb * ROWS, ng), np.float32)
    sp[:rows] = scale
    # (block, row, group, col) -> (block, group, col, row): a column of 32 rows is contiguous
    blocks = qp.reshape(nb, ROWS, ng, GROUP).transpose(0, 2, 3, 1)
    if fmt == "q4_0":
        u = (blocks.astype(np.int16) + 8).astype(np.uint8)
        blocks = u[:, :, 0::2, :] | (u[:, :, 1::2, :] << 4)
    scales = sp.reshape(nb, ROWS, ng).transpose(0, 2, 1)
    return (np.ascontiguousarray(blocks).tobytes(),
            np.ascontiguousarray(scales).astype("<f4").tobytes())


def unpack_blocks(data: bytes, scales: bytes, rows: int, cols: int, fmt: str):
    """The inverse of pack_blocks: dequantized fp32 (rows, cols); for tests and checks."""
    import numpy as np

    nb, ng = -(-rows // ROWS), cols // GROUP
    if fmt == "q4_0":
        b = np.frombuffer(data, np.uint8).reshape(nb, ng, GROUP // 2, ROWS)
        q = np.empty((nb, ng, GROUP, ROWS), np.int8)
        q[:, :, 0::2] = (b & 15).astype(np.int8) - 8
        q[:, :, 1::2] = (b >> 4).astype(np.int8) - 8
    else:
        q = np.frombuffer(data, np.int8).reshape(nb, ng, GROUP, ROWS)
    s = np.frombuffer(scales, "<f4").reshape(nb, ng, ROWS)
    w = q.astype(np.float32) * s[:, :, None, :]
    return w.transpose(0, 3, 1, 2).reshape(nb * ROWS, cols)[:rows]


def matrix_bytes(rows: int, cols: int, fmt: str) -> Tuple[int, int]:
    """Bytes of a quantized matrix's data and scales (before alignment)."""
    nb = -(-rows // ROWS)
    data = nb * ROWS * cols // (2 if fmt == "q4_0" else 1)
    return data, nb * ROWS * (cols // GROUP) * 4


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def layout(c: Config, fmt: str) -> List[Tuple[str, Tuple[int, ...], int, int]]:
    """(name, shape, offset, bytes) of every tensor in file order; quantized matrices are
    two entries, "<name>" (data) and "<name>.scales"."""
    d, hid, L, kv = c.dim, c.hidden_dim, c.n_layers, c.kv_dim
    order: List[Tuple[str, Tuple[int, ...]]] = [
        ("rms_att", (L, d)), ("rms_ffn", (L, d)), ("rms_final", (d,)),
        ("token_embedding", (c.vocab_size, d))]
    for l in range(L):
        order += [(f"wq.{l}", (d, d)), (f"wk.{l}", (kv, d)), (f"wv.{l}", (kv, d)),
                  (f"wo.{l}", (d, d)), (f"w1.{l}", (hid, d)), (f"w2.{l}", (d, hid)),
                  (f"w3.{l}", (hid, d))]
    if not c.shared:
        order.append(("wcls", (c.vocab_size, d)))
    out, at = [], HEADER_SIZE
    for name, shape in order:
        if name.startswith("rms"):
            n = 4
            for s in shape:
                n *= s
            out.append((name, shape, at, n))
            at = _align(at + n)
            continue
        data, scales = matrix_bytes(shape[0], shape[1], fmt)
        out.append((name, shape, at, data))
        at = _align(at + data)
        out.append((name + ".scales", shape, at, scales))
        at = _align(at + scales)
    out.append(("end", (), at, 0))
    return out


def check_quantizable(c: Config) -> None:
    for name, v in (("dim", c.dim), ("hidden_dim", c.hidden_dim)):
        if v % GROUP:
            raise FormatError(f"group size {GROUP} does not divide {name} {v}")


# ----------------------------------------------------------------------------
# writing and reading storybot files

class Progress:
    """A one-line progress bar on stderr (drawn only when stderr is a terminal, unless
    forced), e.g. `quantize q8_0 [########------------]  12/44 wq.1`."""

    def __init__(self, total: int, label: str, stream=None, force: Optional[bool] = None):
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.enabled = force if force is not None else self.stream.isatty()
        self._last = 0.0

    def step(self, what: str = "") -> None:
        self.done += 1
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.05 and self.done < self.total):
            return
        self._last = now
        width = 24
        fill = width * self.done // self.total
        self.stream.write(f"\r{self.label} [{'#' * fill}{'-' * (width - fill)}] "
                          f"{self.done:>3}/{self.total} {what:<12}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def pack_header(c: Config, fmt: str, sha_hex: str, file_size: int) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, ARCH, FORMATS[fmt], GROUP, ROWS, ALIGN, *c.ints(),
                        int(c.shared), bytes.fromhex(sha_hex), file_size)
    return head + b"\0" * (HEADER_SIZE - len(head))


def write_quantized(c: Config, tensors, out_path, fmt: str, sha_hex: str,
                    progress: Optional[Progress] = None) -> int:
    """Writes a storybot quantized file from fp32 tensors; returns its size."""
    import numpy as np

    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_quantizable(c)
    plan = layout(c, fmt)
    size = plan[-1][2]
    quant = quantize_q4 if fmt == "q4_0" else quantize_q8
    tmp = Path(str(out_path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(pack_header(c, fmt, sha_hex, size))
        for name, shape, offset, nbytes in plan[:-1]:
            if name.endswith(".scales"):
                continue
            f.write(b"\0" * (offset - f.tell()))
            if name.startswith("rms"):
                f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())
            else:
                base, _, layer = name.partition(".")
                w = tensors[base][int(layer)] if layer else tensors[base]
                data, scales = pack_blocks(*quant(np.asarray(w, np.float32)), fmt)
                f.write(data)
                f.write(b"\0" * (_align(f.tell()) - f.tell()))
                f.write(scales)
            if progress:
                progress.step(name)
        f.write(b"\0" * (size - f.tell()))
    os.replace(tmp, out_path)
    return size


def read_header(path) -> Header:
    """The header of a storybot quantized file, checked as the library checks it."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < 4 or raw[:4] != MAGIC:
        raise FormatError(f"{path} is not a storybot quantized model (bad magic)")
    if len(raw) < HEADER_SIZE:
        raise FormatError(f"{path} is truncated inside its header")
    (_, version, arch, fmt_id, gs, rows, align, *rest) = _HEADER.unpack_from(raw)
    ints, shared, sha, size = rest[:7], rest[7], rest[8], rest[9]
    if version != VERSION:
        raise FormatError(f"{path}: version {version}, this storybot reads {VERSION}")
    names = {v: k for k, v in FORMATS.items()}
    if arch != ARCH or fmt_id not in names or gs != GROUP or rows != ROWS or align != ALIGN:
        raise FormatError(f"{path}: unsupported architecture/format/group/rows/alignment")
    c = Config(*ints, shared=bool(shared))
    return Header(names[fmt_id], gs, c, sha.hex(), size)


def read_matrix(path, name: str):
    """Dequantized fp32 copy of one matrix of a storybot file (e.g. "wq.0"); for tests."""
    h = read_header(path)
    plan = {n: (shape, off, nb) for n, shape, off, nb in layout(h.config, h.format)}
    shape, off, nb = plan[name]
    _, soff, snb = plan[name + ".scales"]
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(nb)
        f.seek(soff)
        scales = f.read(snb)
    return unpack_blocks(data, scales, shape[0], shape[1], h.format)


def source_mismatch(quantized, source) -> Optional[str]:
    """A warning if the quantized file was not made from this fp32 checkpoint, else None."""
    h = read_header(quantized)
    actual = sha256_file(source)
    if actual == h.source_sha256:
        return None
    return (f"{quantized} was made from a checkpoint with sha256 {h.source_sha256[:16]}..., "
            f"not from {source} ({actual[:16]}...)")


def convert(src, dst, fmt: str = "q8_0", show_progress: Optional[bool] = None) -> int:
    """Quantizes llama2.c checkpoint src into dst; returns the bytes written."""
    c, tensors = read_llama2c(src)
    check_quantizable(c)
    n = 3 + 1 + 7 * c.n_layers + (0 if c.shared else 1)
    bar = Progress(n, f"quantize {fmt}", force=show_progress)
    return write_quantized(c, tensors, dst, fmt, sha256_file(src), bar)


def cmd_quantize(args) -> int:
    from .. import models

    size = convert(models.find(args.model), args.output, args.format,
                   show_progress=False if args.quiet else None)
    print(f"wrote {args.output}: {args.format}, {size / 1e6:.1f} MB")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="convert a llama2.c fp32 checkpoint to storybot's "
                                        "int8 (q8_0) or 4-bit (q4_0) model file")
    p.add_argument("model", help="llama2.c fp32 checkpoint, e.g. stories15M.bin")
    p.add_argument("output", help="file to write, e.g. stories15M.q8_0.bin")
    p.add_argument("-f", "--format", choices=sorted(FORMATS), default="q8_0",
                   help="weight format (default: %(default)s)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quantize)
