"""Converts llama2.c fp32 checkpoints into storybot's quantized model files, each weight
matrix at its own width (8, 6, 5 or 4 bits, groups of 32 along the input, fp16 scales; a
classifier or a draft may take one scale per row), by rounding to nearest or by GPTQ
calibrated on text (robot/dev/calibrate.py).

File layout (version 2, little-endian; native/src/model_quant.c reads it):

    header, 256 bytes
       0  4s   magic b"SBQM"
       4  u32  version (2)
       8  8s   architecture b"llama2\\0\\0"
      16  u32  format: 1 = q8_0, 2 = q4_0 (every matrix but a draft that width), 3 = mixed
      20  u32  group size (32 columns share one scale)
      24  u32  rows per block (32)
      28  u32  tensor alignment in bytes (64)
      32  7i   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
      60  u32  shared classifier (1: the classifier is the token embedding)
      64  32s  sha256 of the source checkpoint
      96  u64  file size in bytes
     104  u32  draft (1: a draft classifier, a cheaper copy of the classifier, is the
               last matrix; the library scores it first, then the rows near its top
               again from the classifier: forward.c)
     108       zeros up to 256
    type table at 256: one byte per matrix in file order (token embedding, per layer
      wq wk wv wo w1 w2 w3, classifier unless shared, draft if any): 8 = q8, 6 = q6,
      5 = q5, 4 = q4, 40 = q4 with one scale per row (a draft's only), 80 = q8 with
      one scale per row (the embedding's or classifier's only), 32 = fp32 row-major (a
      matrix whose inner dimension is not a multiple of 32); zeros up to the next
      64-byte boundary
    tensors, each starting on a 64-byte boundary, zero padding between:
      rms_att (L, dim) f32, rms_ffn (L, dim) f32, rms_final (dim,) f32,
      token embedding, then per layer wq, wk, wv, wo, w1, w2, w3, then the classifier
      unless shared, then the draft if any. Each quantized matrix is its blocks then its
      fp16 scales:
        blocks of 32 rows (the last padded with zero rows); in block b, group g, the
        32 x 32 weights are stored column by column, a column's 32 rows contiguous:
          q8: int8 q, byte ((b * ng + g) * 32 + j) * 32 + r = W[32b + r][32g + j]
          q4: q + 8 in a nibble, byte ((b * ng + g) * 16 + p) * 32 + r holds column
              2p in its low nibble and column 2p + 1 in its high nibble
          q5, q6 (k = 1 or 2 high bits): u = q + 2^(k + 3), each block-group's
              32 * 32 * (4 + k) / 8 bytes are its nibbles, byte p * 32 + r (p < 16)
              holding u's low 4 bits of column p (low nibble) and p + 16 (high
              nibble), then its high bits, byte (512 + i * 32 + r) (i < 4k) holding
              in bits [k(c+1)-1 : kc] the high bits of column i + 4k * c (c < 8 / k)
        scales: fp16, ((b * ng + g) * 32 + r) for row 32b + r and group g; types 40
          and 80: q4's or q8's blocks and one fp16 scale per row (32b + r), their input
          quantized with one scale for the whole vector, so the C906 scales each row
          once, not per group
      A row of W is q * scale.

Rounding to nearest (--method rtn): q8: scale = max|w| / 127, q = round(w / scale) in
[-127, 127]. q4, q5, q6 (levels [-2^(b-1), 2^(b-1) - 1]): q = round(w / scale), the
scale chosen per group among max_w / k (max_w: the weight of largest magnitude,
signed) for the least squared error.
Types 40 and 80 choose one scale per row the same way, over the whole row.
Scales are rounded to fp16 before q is computed, so q fits the stored scale.
GPTQ (--method gptq) chooses each group's scale the same way, from the weights as GPTQ
has updated them by the time it reaches the group.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

MAGIC = b"SBQM"
VERSION = 2
ARCH = b"llama2\0\0"
GROUP = 32
ROWS = 32
ALIGN = 64
HEADER_SIZE = 256
_HEADER = struct.Struct("<4sI8sIIII7iI32sQI")
KINDS = ("token_embedding", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wcls")
Q8, Q6, Q5, Q4, F32 = 8, 6, 5, 4, 32
Q4_ROW = 40  # q4 blocks, one scale per row: a 4-bit draft's type
Q8_ROW = 80  # q8 blocks, one scale per row: a classifier's ("8r" in --bits)
WIDTHS = (Q8, Q6, Q5, Q4)
ROW_KINDS = ("token_embedding", "wcls")  # inputs quantized for them alone (model_quant.c)

# Named formats: bits per kind of matrix (the classifier, when not shared, follows the
# embedding unless named; "draft", if not 0, the width of a draft classifier) and the
# rounding method.
FORMATS: Dict[str, Tuple[Dict[str, int], str]] = {
    # the classifier (most of a token's work) with one scale per row: on the C906 ~13%
    # fewer cycles a token and 0.5 MB less to read, for +0.07% perplexity (README)
    "q8_0": ({**{k: 8 for k in KINDS}, "token_embedding": Q8_ROW}, "rtn"),
    "q4_0": ({k: 4 for k in KINDS}, "rtn"),
    "gptq4": ({k: 4 for k in KINDS}, "gptq"),
    # the board's model (README, "Models and what they cost"): GPTQ; the classifier read
    # through a 4-bit draft, so it can keep 8 bits; the two least sensitive layers at 4
    # bits, the rest at 8 (on the C906 q8 costs fewer cycles than q5 and q6)
    "board": ({"token_embedding": 8, "wq": 4, "wk": 4, "wv": 8, "wo": 8, "w1": 8, "w2": 8,
               "w3": 8, "draft": 4}, "gptq"),
}
# the header's format id, as model_quant.c names it
FORMAT_IDS = {"q8_0": 1, "q4_0": 2, "mixed": 3}
FORMAT_NAMES = {i: name for name, i in FORMAT_IDS.items()}


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
    draft: bool = False  # the file stores a draft classifier (not llama2.c's config)

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
    types: List[int]


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

def to_f16(scale):
    """Scales as the file stores them (fp16), back in float32."""
    import numpy as np

    if np.any(np.abs(scale) > 65504):
        raise FormatError("a weight group's scale does not fit fp16 (weights above ~8e6)")
    return scale.astype(np.float16).astype(np.float32)


def scale_q8(g, bits: int = 8):
    """Scales (rows,) of groups g (rows, 32): max|w| / 127 in fp16."""
    import numpy as np

    return to_f16((np.abs(g).max(axis=-1) / np.float32(127)).astype(np.float32))


# q4 scale candidates, as divisors of each group's largest-magnitude weight: -8 maps it
# to the level that has no positive twin, the others trade its error for the rest's.
Q4_DIVISORS = (-8.0, -7.75, -7.5, -7.25, -7.0, -6.75, -6.5, 7.0, 7.25, 7.5)


def divisors(bits: int):
    """Q4_DIVISORS for 4 bits; for wider levels the same shape scaled (m = 2^(b-1))."""
    m = 1 << (bits - 1)
    return tuple(k * m / 8 for k in Q4_DIVISORS)


def scale_q4(g, bits: int = 4):
    """Scales (rows,) of groups g (rows, 32): among max_w / k for k in divisors(bits),
    in fp16, the one that rounds the group with the least squared error."""
    import numpy as np

    lo, hi = LEVELS[bits]
    idx = np.abs(g).argmax(axis=-1)[:, None]
    peak = np.take_along_axis(g, idx, axis=-1)[:, 0]
    best_s = np.zeros(peak.shape, np.float32)
    best_err = np.full(peak.shape, np.inf)
    for k in divisors(bits):
        scale = to_f16((peak / np.float32(k)).astype(np.float32))
        safe = np.where(scale != 0, scale, np.float32(1))
        q = np.clip(np.rint(g / safe[:, None]), lo, hi)
        err = ((g - q * scale[:, None]) ** 2).sum(axis=-1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_s = np.where(better, scale, best_s)
    return best_s


SCALES = {Q8: scale_q8, Q6: scale_q4, Q5: scale_q4, Q4: scale_q4, Q4_ROW: scale_q4,
          Q8_ROW: scale_q8}
LEVELS = {Q8: (-127, 127), Q6: (-32, 31), Q5: (-16, 15), Q4: (-8, 7), Q4_ROW: (-8, 7),
          Q8_ROW: (-127, 127)}


def width(t: int) -> int:
    """Bits per weight of a type."""
    return {Q4_ROW: Q4, Q8_ROW: Q8}.get(t, t)


def scale_group(t: int, cols: int) -> int:
    """Weights sharing one scale: a row for Q4_ROW and Q8_ROW, else GROUP."""
    return cols if t in (Q4_ROW, Q8_ROW) else GROUP


def quantize_rtn(w, bits: int):
    """(rows, cols) fp32 -> q (int8, in the type's levels), fp32 scales (rows, cols /
    group) holding fp16 values."""
    import numpy as np

    group = scale_group(bits, w.shape[1])
    g = w.astype(np.float32).reshape(w.shape[0], -1, group)
    scale = SCALES[bits](g.reshape(-1, group), width(bits)).reshape(g.shape[:2])
    safe = np.where(scale != 0, scale, np.float32(1))
    lo, hi = LEVELS[bits]
    q = np.clip(np.rint(g / safe[:, :, None]), lo, hi).astype(np.int8)
    return q.reshape(w.shape), scale


def quantize_gptq(w, h, bits: int):
    from .calibrate import gptq

    return gptq(w, h, width(bits), scale_group(bits, w.shape[1]), SCALES[bits])


def pack_blocks(q, scale, bits: int) -> Tuple[bytes, bytes]:
    """q (rows, cols), scales (rows, groups) -> the file's data and scale bytes."""
    import numpy as np

    rows, cols = q.shape
    nb, ng = -(-rows // ROWS), cols // GROUP
    qp = np.zeros((nb * ROWS, cols), np.int8)
    qp[:rows] = q
    sp = np.zeros((nb * ROWS, scale.shape[1]), np.float32)
    sp[:rows] = scale
    bits = width(bits)
    # (block, row, group, col) -> (block, group, col, row): a column of 32 rows is contiguous
    blocks = qp.reshape(nb, ROWS, ng, GROUP).transpose(0, 2, 3, 1)
    if bits == Q4:
        u = (blocks.astype(np.int16) + 8).astype(np.uint8)
        blocks = u[:, :, 0::2, :] | (u[:, :, 1::2, :] << 4)
    elif bits in (Q5, Q6):
        u = (blocks.astype(np.int16) + (1 << (bits - 1))).astype(np.uint8)
        nib = (u[:, :, :16, :] & 15) | ((u[:, :, 16:, :] & 15) << 4)
        k = bits - 4
        top = (u >> 4).reshape(nb, ng, 8 // k, 4 * k, ROWS)  # column i + 4k * c
        hi = np.zeros((nb, ng, 4 * k, ROWS), np.uint8)
        for c in range(8 // k):
            hi |= top[:, :, c] << (k * c)
        blocks = np.concatenate([nib, hi], axis=2)
    scales = sp.reshape(nb, ROWS, -1).transpose(0, 2, 1)
    return (np.ascontiguousarray(blocks).tobytes(),
            np.ascontiguousarray(scales).astype("<f2").tobytes())


def unpack_blocks(data: bytes, scales: bytes, rows: int, cols: int, bits: int):
    """The inverse of pack_blocks: dequantized fp32 (rows, cols); for tests and checks."""
    import numpy as np

    if bits == F32:
        return np.frombuffer(data, "<f4").reshape(rows, cols).copy()
    nb, ng = -(-rows // ROWS), cols // GROUP
    if bits in (Q4, Q4_ROW):
        b = np.frombuffer(data, np.uint8).reshape(nb, ng, GROUP // 2, ROWS)
        q = np.empty((nb, ng, GROUP, ROWS), np.int8)
        q[:, :, 0::2] = (b & 15).astype(np.int8) - 8
        q[:, :, 1::2] = (b >> 4).astype(np.int8) - 8
    elif bits in (Q5, Q6):
        k = bits - 4
        b = np.frombuffer(data, np.uint8).reshape(nb, ng, 16 + 4 * k, ROWS)
        u = np.concatenate([b[:, :, :16] & 15, b[:, :, :16] >> 4], axis=2)
        for c in range(8 // k):
            top = (b[:, :, 16:] >> (k * c)) & ((1 << k) - 1)
            u[:, :, 4 * k * c:4 * k * (c + 1)] |= top << 4
        q = u.astype(np.int8) - (1 << (bits - 1))
    else:
        q = np.frombuffer(data, np.int8).reshape(nb, ng, GROUP, ROWS)
    s = np.frombuffer(scales, "<f2").astype(np.float32).reshape(nb, -1, ROWS)  # *_ROW: 1 group
    w = q.astype(np.float32) * s[:, :, None, :]
    return w.transpose(0, 3, 1, 2).reshape(nb * ROWS, cols)[:rows]


def matrix_bytes(rows: int, cols: int, bits: int) -> Tuple[int, int]:
    """Bytes of a matrix's data and scales (before alignment)."""
    if bits == F32:
        return rows * cols * 4, 0
    nb = -(-rows // ROWS)
    return nb * ROWS * cols * width(bits) // 8, nb * ROWS * (cols // scale_group(bits, cols)) * 2


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def matrix_names(c: Config) -> List[Tuple[str, Tuple[int, int]]]:
    """The quantized matrices in file order, with their shapes."""
    d, hid, kv = c.dim, c.hidden_dim, c.kv_dim
    out = [("token_embedding", (c.vocab_size, d))]
    for l in range(c.n_layers):
        out += [(f"wq.{l}", (d, d)), (f"wk.{l}", (kv, d)), (f"wv.{l}", (kv, d)),
                (f"wo.{l}", (d, d)), (f"w1.{l}", (hid, d)), (f"w2.{l}", (d, hid)),
                (f"w3.{l}", (hid, d))]
    if not c.shared:
        out.append(("wcls", (c.vocab_size, d)))
    if c.draft:
        out.append(("draft", (c.vocab_size, d)))
    return out


def matrix_types(c: Config, bits: Dict[str, int]) -> List[int]:
    """Each matrix's type, in file order, from bits per kind: fp32 where the inner
    dimension is not whole groups."""
    out = []
    for name, (_, cols) in matrix_names(c):
        kind = name.partition(".")[0]
        b = bits.get(kind, bits.get("token_embedding")) if kind == "wcls" else bits[kind]
        if kind == "draft" and cols % GROUP:
            raise FormatError(f"a draft classifier needs dim a multiple of {GROUP}")
        if b not in WIDTHS and not (b == Q8_ROW and kind in ROW_KINDS):
            raise FormatError(f"{kind}: {b} bits; storybot stores 4, 5, 6 or 8")
        if kind == "draft" and b == Q4:
            b = Q4_ROW  # a draft's 4 bits take one scale per row (quant.c, SB_Q4_ROW)
        out.append(F32 if cols % GROUP else b)
    return out


def table_size(c: Config) -> int:
    return _align(len(matrix_names(c)))


def layout(c: Config, types: List[int]) -> List[Tuple[str, Tuple[int, ...], int, int]]:
    """(name, shape, offset, bytes) of every tensor in file order; matrices are two
    entries, "<name>" (data) and "<name>.scales" (empty for fp32)."""
    d, L = c.dim, c.n_layers
    out, at = [], HEADER_SIZE + table_size(c)
    for name, shape in (("rms_att", (L, d)), ("rms_ffn", (L, d)), ("rms_final", (d,))):
        n = 4
        for s in shape:
            n *= s
        out.append((name, shape, at, n))
        at = _align(at + n)
    for (name, shape), t in zip(matrix_names(c), types):
        data, scales = matrix_bytes(shape[0], shape[1], t)
        out.append((name, shape, at, data))
        at = _align(at + data)
        out.append((name + ".scales", shape, at, scales))
        at = _align(at + scales)
    out.append(("end", (), at, 0))
    return out


def parse_bits(spec: str, base: Dict[str, int]) -> Dict[str, int]:
    """"token_embedding=8,wv=8" (or "embedding=8") over a format's bits per kind;
    "draft=4" adds a draft classifier, "draft=0" leaves it out; "embedding=8r" (or
    "wcls=8r") keeps 8 bits with one scale per row (Q8_ROW)."""
    out = dict(base)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, value = item.partition("=")
        kind = "token_embedding" if kind == "embedding" else kind
        widths = WIDTHS + (0,) if kind == "draft" else WIDTHS
        if kind in ROW_KINDS and value == "8r":
            out[kind] = Q8_ROW
            continue
        if kind not in KINDS + ("draft",) or not value.isdigit() or int(value) not in widths:
            raise FormatError(f"--bits item {item!r}: want KIND=4|5|6|8 with KIND one of "
                              f"embedding, {', '.join(KINDS[1:])}, draft (also draft=0); "
                              f"embedding and wcls also 8r")
        out[kind] = int(value)
    return out


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


def pack_header(c: Config, format_id: int, sha_hex: str, file_size: int,
                types: List[int]) -> bytes:
    head = _HEADER.pack(MAGIC, VERSION, ARCH, format_id, GROUP, ROWS, ALIGN, *c.ints(),
                        int(c.shared), bytes.fromhex(sha_hex), file_size, int(c.draft))
    head += b"\0" * (HEADER_SIZE - len(head))
    table = bytes(types)
    return head + table + b"\0" * (table_size(c) - len(table))


def format_id(types: List[int]) -> int:
    kinds = {width(t) for t in types} - {F32}  # a q8 classifier scaled per row is still q8
    return FORMAT_IDS["q8_0" if kinds == {Q8} else "q4_0" if kinds == {Q4} else "mixed"]


def write_quantized(c: Config, tensors, out_path, bits: Dict[str, int], method: str,
                    sha_hex: str, hessians=None, progress: Optional[Progress] = None) -> int:
    """Writes a storybot quantized file from fp32 tensors; returns its size. method
    "gptq" needs hessians (calibrate.hessians) for every matrix."""
    import numpy as np

    types = matrix_types(c, bits)
    plan = layout(c, types)
    size = plan[-1][2]
    kinds = dict(zip((n for n, _ in matrix_names(c)), types))
    tmp = Path(str(out_path) + ".tmp")
    with open(tmp, "wb") as f:
        body = types[:-1] if c.draft else types  # the format names the model, not its draft
        f.write(pack_header(c, format_id(body), sha_hex, size, types))
        for name, shape, offset, nbytes in plan[:-1]:
            if name.endswith(".scales"):
                continue
            f.write(b"\0" * (offset - f.tell()))
            if name.startswith("rms"):
                f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())
            else:
                base, _, layer = name.partition(".")
                base = "wcls" if base == "draft" else base  # the draft: the classifier again
                w = np.asarray(tensors[base][int(layer)] if layer else tensors[base], np.float32)
                t = kinds[name]
                if t == F32:
                    f.write(np.ascontiguousarray(w, dtype="<f4").tobytes())
                else:
                    h = hessians[base if name == "draft" else name] if method == "gptq" else None
                    qs = quantize_gptq(w, h, t) if method == "gptq" else quantize_rtn(w, t)
                    data, scales = pack_blocks(*qs, t)
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
        ints, shared, sha, size, draft = rest[:7], rest[7], rest[8], rest[9], rest[10]
        if version != VERSION:
            raise FormatError(f"{path}: version {version}, this storybot reads {VERSION}")
        if arch != ARCH or fmt_id not in FORMAT_NAMES or gs != GROUP or rows != ROWS \
                or align != ALIGN or draft > 1:
            raise FormatError(f"{path}: unsupported architecture/format/group/rows/alignment")
        c = Config(*ints, shared=bool(shared), draft=bool(draft))
        types = list(f.read(len(matrix_names(c))))
    return Header(FORMAT_NAMES[fmt_id], gs, c, sha.hex(), size, types)


def classifier_read_by_blocks(path) -> int:
    """Bytes of a storybot file's classifier that the library reads a few blocks a token
    instead of mapping (0 unless the file has a draft, which stands in for it)."""
    h = read_header(path)
    if not h.config.draft:
        return 0
    name = "token_embedding" if h.config.shared else "wcls"
    sizes = {n: nb for n, _, _, nb in layout(h.config, h.types)}
    return sizes[name] + sizes[name + ".scales"]


def read_matrix(path, name: str):
    """Dequantized fp32 copy of one matrix of a storybot file (e.g. "wq.0"); for tests."""
    h = read_header(path)
    plan = {n: (shape, off, nb) for n, shape, off, nb in layout(h.config, h.types)}
    t = dict(zip((n for n, _ in matrix_names(h.config)), h.types))[name]
    shape, off, nb = plan[name]
    _, soff, snb = plan[name + ".scales"]
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(nb)
        f.seek(soff)
        scales = f.read(snb)
    return unpack_blocks(data, scales, shape[0], shape[1], t)


def source_mismatch(quantized, source) -> Optional[str]:
    """A warning if the quantized file was not made from this fp32 checkpoint, else None."""
    h = read_header(quantized)
    actual = sha256_file(source)
    if actual == h.source_sha256:
        return None
    return (f"{quantized} was made from a checkpoint with sha256 {h.source_sha256[:16]}..., "
            f"not from {source} ({actual[:16]}...)")


def calibration_hessians(c: Config, tensors, src, tokenizer=None, text=None, log=None):
    """H per matrix from the given text, or from stories src samples itself."""
    from .. import models
    from . import calibrate

    tokenizer = tokenizer or models.find(models.DEFAULT_TOKENIZER)
    if text is not None:
        stories = calibrate.text_stories(src, tokenizer, Path(text).read_text("utf-8"),
                                         c.seq_len)
    else:
        stories = calibrate.sample_stories(src, tokenizer)
    if log:
        log(f"calibrating on {len(stories)} stories, {sum(map(len, stories))} tokens")
    return calibrate.hessians(c, tensors, stories)


def convert(src, dst, fmt: str = "q8_0", show_progress: Optional[bool] = None,
            bits: Optional[str] = None, method: Optional[str] = None,
            calibration=None, tokenizer=None, log=None) -> int:
    """Quantizes llama2.c checkpoint src into dst; returns the bytes written. fmt names
    a format (FORMATS); bits ("wv=8,...") and method override its choices; GPTQ
    calibrates on the text file `calibration`, else on stories src samples itself."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    base, default_method = FORMATS[fmt]
    per_kind = parse_bits(bits or "", base)
    method = method or default_method
    c, tensors = read_llama2c(src)
    c = dataclasses.replace(c, draft=bool(per_kind.get("draft")))
    types = matrix_types(c, per_kind)
    if log and F32 in types:
        kept = [n for (n, _), t in zip(matrix_names(c), types) if t == F32]
        log(f"kept in fp32 (inner dimension not a multiple of {GROUP}): {', '.join(kept)}")
    h = calibration_hessians(c, tensors, src, tokenizer, calibration, log) \
        if method == "gptq" else None
    n = 3 + len(types)
    bar = Progress(n, f"quantize {fmt}", force=show_progress)
    return write_quantized(c, tensors, dst, per_kind, method, sha256_file(src), h, bar)


def cmd_quantize(args) -> int:
    from .. import models

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr)

    try:
        size = convert(models.find(args.model), args.output, args.format,
                       show_progress=False if args.quiet else None, bits=args.bits,
                       method=args.method, calibration=args.calibration,
                       tokenizer=args.tokenizer, log=log)
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {args.format}, {size / 1e6:.1f} MB")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quantize", help="convert a llama2.c fp32 checkpoint to a storybot "
                                        "quantized model file (8 to 4 bits per matrix)")
    p.add_argument("model", help="llama2.c fp32 checkpoint, e.g. stories15M.bin")
    p.add_argument("output", help="file to write, e.g. stories15M.q8_0.bin")
    p.add_argument("-f", "--format", choices=sorted(FORMATS), default="q8_0",
                   help="widths and method (default: %(default)s)")
    p.add_argument("--bits", default=None,
                   help="override widths per kind of matrix, e.g. 'embedding=4,wv=8,w2=8' "
                        "(kinds: embedding, wq, wk, wv, wo, w1, w2, w3, wcls; draft=4 adds a "
                        "4-bit draft classifier, draft=0 drops the format's; embedding=8r or "
                        "wcls=8r: 8 bits, one scale per row)")
    p.add_argument("--method", choices=["rtn", "gptq"], default=None,
                   help="round to nearest, or GPTQ calibrated on text (default: the "
                        "format's)")
    p.add_argument("--calibration", default=None,
                   help="GPTQ's text (stories separated by '<|story|>' lines; default: 100 "
                        "stories the model samples itself, seeds 2000-2099)")
    p.add_argument("-z", dest="tokenizer", default=None, help="tokenizer for calibration")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_quantize)
