"""Calibration for `storybot quantize`: the inputs each weight matrix sees on real text,
and GPTQ, which rounds a matrix's weights one column at a time and spreads each rounding
error over the columns not yet rounded, weighted by those inputs (Frantar et al., 2022,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

The inputs are summarized per matrix as H = X^T X (X: one row per token, the matrix's
input vector), computed by a numpy forward pass of the fp32 model over the calibration
tokens. By default those tokens are stories the fp32 model samples itself (temperature 1,
top-p 0.9, no prompt, seeds CALIBRATION_SEEDS): the eval text was sampled the same way
with seeds 1000-1099, so these seeds stay clear of it and the eval text stays held out.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

CALIBRATION_SEEDS = range(2000, 2100)
STORY_SEPARATOR = "<|story|>"


# ----------------------------------------------------------------------------
# calibration tokens

def sample_stories(model, tokenizer, seeds: Iterable[int] = CALIBRATION_SEEDS,
                   steps: int = 256) -> List[List[int]]:
    """Token ids (BOS first) of stories the model samples itself, one per seed."""
    from ..engine import Engine, Params

    out = []
    with Engine(model, tokenizer) as e:
        for seed in seeds:
            ids = [1] + [t.id for t in e.tokens(None, Params(temperature=1.0, topp=0.9,
                                                              seed=seed, steps=steps))]
            out.append(ids[:-1] if ids[-1] == 1 else ids)  # a closing BOS is no input
    return out


def text_stories(model, tokenizer, text: str, seq_len: int) -> List[List[int]]:
    """Token ids of a text's stories (split at `<|story|>` lines), each from BOS."""
    from ..engine import Engine

    stories = [s.strip() for s in text.split(STORY_SEPARATOR) if s.strip()]
    with Engine(model, tokenizer) as e:
        return [e.tokenize(s)[:seq_len] for s in stories]


# ----------------------------------------------------------------------------
# the inputs of every matrix (numpy forward pass, as llama2.c run.c computes it)

def _rmsnorm(x, w):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + 1e-5) * w


def forward(c, tensors, ids: Sequence[int], add=None):
    """The final normalized states (T, dim) of a story's tokens; add(key, X) sees each
    matrix input ("att_in.l", "att_out.l", "ffn_in.l", "ffn_out.l", "final")."""
    hs, T = c.dim // c.n_heads, len(ids)
    kv_mul = c.n_heads // c.n_kv_heads
    freq = 1.0 / 10000.0 ** (np.arange(0, hs, 2, dtype=np.float32) / hs)
    ang = np.arange(T, dtype=np.float32)[:, None] * freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    mask = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    add = add or (lambda key, x: None)
    x = np.asarray(tensors["token_embedding"], np.float32)[list(ids)]
    for l in range(c.n_layers):
        xb = _rmsnorm(x, tensors["rms_att"][l])
        add(f"att_in.{l}", xb)
        q = (xb @ tensors["wq"][l].T).reshape(T, c.n_heads, hs)
        k = (xb @ tensors["wk"][l].T).reshape(T, c.n_kv_heads, hs)
        v = (xb @ tensors["wv"][l].T).reshape(T, c.n_kv_heads, hs)
        for t in (q, k):
            a, b = t[..., 0::2].copy(), t[..., 1::2].copy()
            t[..., 0::2], t[..., 1::2] = a * cos - b * sin, a * sin + b * cos
        k, v = np.repeat(k, kv_mul, axis=1), np.repeat(v, kv_mul, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(hs)) + mask
        att = np.exp(att - att.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", att, v).reshape(T, c.dim)
        add(f"att_out.{l}", o)
        x = x + o @ tensors["wo"][l].T
        xb = _rmsnorm(x, tensors["rms_ffn"][l])
        add(f"ffn_in.{l}", xb)
        h1, h3 = xb @ tensors["w1"][l].T, xb @ tensors["w3"][l].T
        hb = h1 / (1 + np.exp(-h1)) * h3
        add(f"ffn_out.{l}", hb)
        x = x + hb @ tensors["w2"][l].T
    x = _rmsnorm(x, tensors["rms_final"])
    add("final", x)
    return x


def hessians(c, tensors, stories: Sequence[List[int]]) -> Dict[str, np.ndarray]:
    """H = X^T X (float64) for the input of every matrix, keyed as the file names them
    ("wq.0", ..., "token_embedding" for the classifier's input). Matrices reading the
    same input share one array."""
    acc: Dict[str, np.ndarray] = {}

    def add(key, x):
        x = x.astype(np.float64)
        acc[key] = acc.get(key, 0) + x.T @ x

    for ids in stories:
        forward(c, tensors, ids, add)
    out = {"token_embedding": acc["final"], "wcls": acc["final"]}
    for l in range(c.n_layers):
        for name, key in (("wq", "att_in"), ("wk", "att_in"), ("wv", "att_in"),
                          ("wo", "att_out"), ("w1", "ffn_in"), ("w3", "ffn_in"),
                          ("w2", "ffn_out")):
            out[f"{name}.{l}"] = acc[f"{key}.{l}"]
    return out


# ----------------------------------------------------------------------------
# GPTQ

def gptq(w, h, bits: int, group: int, choose_scale, damp: float = 0.01):
    """(rows, cols) fp32 weights, their input's H -> q (int8, in the width's range) and
    scales (rows, cols / group), rounded column by column with the errors spread by
    H's inverse. choose_scale(wg, bits) picks a group's scales from its current weights
    (already the values the file stores)."""
    W = np.asarray(w, np.float64).copy()
    H = np.asarray(h, np.float64).copy()
    rows, n = W.shape
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H[np.diag_indices(n)] += damp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper factor: H^-1 = U^T U
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if bits == 8:
        lo = -127
    Q = np.zeros((rows, n), np.int8)
    S = np.zeros((rows, n // group), np.float32)
    for g0 in range(0, n, group):
        scale = choose_scale(W[:, g0:g0 + group].astype(np.float32), bits).astype(np.float64)
        S[:, g0 // group] = scale
        safe = np.where(scale != 0, scale, 1.0)
        err = np.zeros((rows, group))
        for i in range(group):
            col = g0 + i
            q = np.clip(np.rint(W[:, col] / safe), lo, hi)
            q[scale == 0] = 0
            Q[:, col] = q
            e = (W[:, col] - q * scale) / U[col, col]
            W[:, col + 1:g0 + group] -= np.outer(e, U[col, col + 1:g0 + group])
            err[:, i] = e
        W[:, g0 + group:] -= err @ U[g0:g0 + group, g0 + group:]
    return Q, S
