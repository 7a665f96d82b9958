"""Writes small llama2.c checkpoints and tokenizers for tests: valid ones and broken ones."""
from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Header:
    dim: int = 16
    hidden_dim: int = 40
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    vocab_size: int = 32000  # the real tokenizer's, so tests can use it
    seq_len: int = 32

    def pack(self) -> bytes:
        return struct.pack("<7i", *astuple(self))

    def n_floats(self) -> int:
        """Floats after the header, as the v0 format lays them out."""
        v, d, L, h = abs(self.vocab_size), self.dim, self.n_layers, self.hidden_dim
        head = d // self.n_heads
        kv = self.n_kv_heads * head
        n = v * d + 2 * L * d + 2 * L * d * d + 2 * L * d * kv + 3 * L * d * h + d
        n += self.seq_len * head
        return n + (v * d if self.vocab_size < 0 else 0)


def write_model(path: Path, header: Header = Header(), seed: int = 0) -> Path:
    """A valid checkpoint with random weights of a sensible scale."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(header.n_floats()) * 0.2).astype("<f4")
    path.write_bytes(header.pack() + w.tobytes())
    return path


def with_header(header: Header, **changes) -> Header:
    return replace(header, **changes)
