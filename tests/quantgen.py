"""Writes llama2.c "ak42" version-2 int8 checkpoints (what llama2.c's export.py
--version 2 writes, read by runq.c) with numpy, for tests and benchmarks.

Layout: a 256-byte header (u32 magic 0x616b3432, i32 version 2, the 7 config ints with
a positive vocab_size, u8 shared-classifier flag, i32 group size at byte 37, zeros), the
fp32 norms (rms_att, rms_ffn, rms_final), then each quantized tensor as its int8 values
followed by its fp32 scales, one scale per group of group_size values in row-major order:
the token embedding, all wq, all wk, all wv, all wo, all w1, all w2, all w3 and, when not
shared, the classifier. Quantization: scale = max|w| / 127, q = round(w / scale).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from robot.dev.quantize import read_llama2c

AK42_MAGIC = 0x616B3432


def ak42_header(c, group_size: int, version: int = 2) -> bytes:
    head = struct.pack("<Ii7iBi", AK42_MAGIC, version, *c.ints(), int(c.shared), group_size)
    return head + b"\0" * (256 - len(head))


def quantize_rows(w: np.ndarray, group_size: int):
    """Flat int8 values and fp32 scales, as export.py's quantize_q80."""
    g = np.asarray(w, np.float32).reshape(-1, group_size)
    scale = (np.abs(g).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.rint(g / safe[:, None]).astype(np.int8)
    return q.reshape(-1), scale


def write_ak42(src, dst, group_size: int = 64) -> Path:
    """Converts a llama2.c v0 fp32 checkpoint; like export.py, the group size halves
    until it divides dim."""
    c, t = read_llama2c(src)
    while c.dim % group_size:
        group_size //= 2
    with open(dst, "wb") as f:
        f.write(ak42_header(c, group_size))
        for name in ("rms_att", "rms_ffn", "rms_final"):
            f.write(np.ascontiguousarray(t[name], "<f4").tobytes())
        tensors = [t["token_embedding"]]
        for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            tensors += [t[name][l] for l in range(c.n_layers)]
        if not c.shared:
            tensors.append(t["wcls"])
        for w in tensors:
            q, s = quantize_rows(w, group_size)
            f.write(q.tobytes())
            f.write(s.astype("<f4").tobytes())
    return Path(dst)
