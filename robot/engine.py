"""The story engine: a thin Python face on the native library (robot._native, cffi).

This is the only module that touches ``lib``. A story is a generator of tokens; the
library releases the GIL inside each call, so a worker thread can generate while other
threads synthesize and play audio.
"""
from __future__ import annotations

import codecs
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Union

if os.environ.get("STORYBOT_ABI") == "1":  # force the ABI-mode fallback (tests, the board)
    from ._abi import ffi, lib
else:
    try:
        from ._native import ffi, lib
    except ImportError:  # no compiled extension for this Python: load the shared library
        from ._abi import ffi, lib

_LOGGER = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class EngineError(Exception):
    """A native call failed; the message says why (bad file, bad argument, ...)."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.status_name = ffi.string(lib.sb_status_name(status)).decode()
        super().__init__(message or self.status_name)


@dataclass(frozen=True)
class Params:
    """Sampling settings for one story."""

    temperature: float = 1.0
    """Softmax temperature; 0 picks the most likely token every time."""
    topp: float = 0.9
    """Nucleus sampling mass in [0, 1]; 0 or 1 sample the whole distribution."""
    seed: int = 0
    """xorshift seed; 0 takes the clock, as the reference CLI does."""
    steps: int = 256
    """Positions to run, prompt included; 0 or more than the context means the context."""
    kernels: str = "auto"
    """"auto" for the fastest faithful kernels, "generic" for the portable C ones."""
    n_threads: int = 1
    """Threads sharing each matrix-vector product (results do not depend on it)."""
    kv_fp16: Optional[bool] = None
    """KV cache in IEEE half precision (half its memory, no longer bit-exact); None: half
    for quantized models where the CPU converts halves in vector instructions (x86), else
    fp32; the fp32 model stays fp32 (and exact)."""


@dataclass(frozen=True)
class Token:
    """One position of a story."""

    id: int
    pos: int
    piece: bytes
    """The decoded bytes of the token (a byte token's raw byte included)."""
    printable: bool
    """Whether the reference run.c prints this piece (it drops lone control/non-ASCII bytes)."""
    from_prompt: bool


@dataclass
class Stats:
    """Timing of the last story, generation only (no speech)."""

    prompt_tokens: int = 0
    tokens: int = 0
    """Positions run, prompt included."""
    seconds: float = 0.0
    first_token_seconds: float = 0.0
    """From the start of the story to its first token (prompt processing)."""
    token_times: List[float] = field(default_factory=list)
    finish_reason: str = ""
    """"end" (the model ended the story with BOS), "length" (the step budget or the
    context ran out, possibly mid-sentence) or "stopped" (stop() was called)."""

    @property
    def tokens_per_second(self) -> float:
        """Like run.c's "achieved tok/s": the clock starts after the first position."""
        if self.tokens <= 1 or self.seconds <= self.first_token_seconds:
            return 0.0
        return (self.tokens - 1) / (self.seconds - self.first_token_seconds)


@dataclass(frozen=True)
class ModelInfo:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool
    format: str
    kernels: str
    weight_bytes: int
    kv_fp16: bool


def _check(status: int, ctx=None) -> int:
    if status < 0:
        msg = ffi.string(lib.sb_last_error(ctx)).decode() if ctx is not None else ""
        raise EngineError(status, msg)
    return status


def _native_params(params: Params):
    if params.kernels not in ("auto", "generic"):
        raise ValueError(f"kernels must be 'auto' or 'generic', not {params.kernels!r}")
    if not 0 <= params.seed < 2**64:
        raise ValueError(f"seed {params.seed} must be in [0, 2**64)")
    p = ffi.new("sb_params *", lib.sb_default_params())
    p.temperature = params.temperature
    p.topp = params.topp
    p.seed = params.seed if params.seed else int(time.time()) & 0xFFFFFFFF
    if not -2**31 <= params.steps < 2**31:
        raise ValueError(f"steps {params.steps} is out of range")
    p.steps = params.steps
    p.kernels = lib.SB_KERNELS_GENERIC if params.kernels == "generic" else lib.SB_KERNELS_AUTO
    p.n_threads = params.n_threads
    p.kv_fp16 = -1 if params.kv_fp16 is None else int(params.kv_fp16)
    return p


def _prompt_bytes(prompt: Union[str, bytes, None]) -> bytes:
    if prompt is None:
        return b""
    data = prompt.encode("utf-8", "surrogateescape") if isinstance(prompt, str) else bytes(prompt)
    if b"\0" in data:
        raise ValueError("prompt contains a NUL character")
    return data


class Engine:
    """A loaded model and tokenizer; tells one story at a time."""

    def __init__(self, model: PathLike, tokenizer: PathLike, params: Params = Params()):
        err = ffi.new("char[]", 256)
        out = ffi.new("sb_context **")
        self.params = params
        status = lib.sb_open(os.fsencode(model), os.fsencode(tokenizer), _native_params(params),
                             out, err, 256)
        if status != lib.SB_OK:
            raise EngineError(status, ffi.string(err).decode("utf-8", "replace"))
        self._ctx = ffi.gc(out[0], lib.sb_free)
        self._story = 0  # bumped by each story; an older generator then refuses to go on
        self._stopped = False
        self._lock = threading.Lock()
        self.stats = Stats()
        info = ffi.new("sb_model_info *")
        _check(lib.sb_model_info_get(self._ctx, info), self._ctx)
        self.info = ModelInfo(
            info.dim, info.hidden_dim, info.n_layers, info.n_heads, info.n_kv_heads,
            info.vocab_size, info.seq_len, bool(info.shared_classifier),
            ffi.string(info.format).decode(), ffi.string(info.kernels).decode(),
            info.weight_bytes, bool(info.kv_fp16))
        _LOGGER.debug("loaded %s: %s", model, self.info)

    def close(self) -> None:
        """Frees the native context now rather than at garbage collection."""
        if self._ctx is not None:
            ffi.release(self._ctx)
            self._ctx = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _context(self):
        if self._ctx is None:
            raise EngineError(lib.SB_ERR_STATE, "the engine is closed")
        return self._ctx

    def tokens(self, prompt: Union[str, bytes, None] = None,
               params: Optional[Params] = None) -> Iterator[Token]:
        """Starts a story and yields its tokens; the prompt's own tokens come first."""
        ctx = self._context()
        with self._lock:
            if params is not None:
                if ((params.kernels, params.n_threads, params.kv_fp16)
                        != (self.params.kernels, self.params.n_threads, self.params.kv_fp16)):
                    raise ValueError("kernels, threads and the KV cache type are chosen when "
                                     "the engine is created")
                _check(lib.sb_reset(ctx, _native_params(params)), ctx)
                self.params = params
            else:
                _check(lib.sb_reset(ctx, _native_params(self.params)), ctx)
            _check(lib.sb_start(ctx, _prompt_bytes(prompt)), ctx)
            self._stopped = False
            self._story += 1
            story = self._story
        return self._run(ctx, story)

    def _run(self, ctx, story: int) -> Iterator[Token]:
        tok = ffi.new("sb_token *")
        stats = self.stats = Stats()
        start = time.perf_counter()
        while True:
            if story != self._story:
                raise EngineError(lib.SB_ERR_STATE, "another story started on this engine")
            status = _check(lib.sb_next(ctx, tok), ctx)
            now = time.perf_counter() - start
            stats.seconds = now
            if status == lib.SB_END:
                stats.tokens = tok.pos
                stats.finish_reason = self._finish_reason(tok.pos)
                return
            stats.tokens = tok.pos
            stats.token_times.append(now)
            if tok.pos == 1:
                stats.first_token_seconds = now
            from_prompt = bool(tok.flags & lib.SB_PIECE_PROMPT)
            if from_prompt:
                stats.prompt_tokens += 1
            yield Token(tok.id, tok.pos, ffi.unpack(tok.piece, tok.piece_len),
                        not tok.flags & lib.SB_PIECE_UNPRINTABLE, from_prompt)

    def _finish_reason(self, pos: int) -> str:
        if self._stopped:
            return "stopped"
        steps = self.params.steps
        budget = self.info.seq_len if steps == 0 or steps > self.info.seq_len else steps
        return "length" if pos >= budget else "end"

    def generate(self, prompt: Union[str, bytes, None] = None,
                 params: Optional[Params] = None) -> Iterator[str]:
        """Starts a story and yields its text in pieces, each whole UTF-8 characters.

        Byte tokens are joined into the characters they spell (the reference CLI drops
        them) and control bytes are dropped, so the text is clean for speech.
        """
        decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        for token in self.tokens(prompt, params):
            if len(token.piece) == 1 and token.piece[0] < 0x80 and not token.printable:
                continue
            text = decoder.decode(token.piece)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def stop(self) -> None:
        """Ends the current story after the token being computed. Safe from any thread."""
        if self._ctx is not None:
            self._stopped = True
            lib.sb_stop(self._ctx)

    def tokenize(self, text: Union[str, bytes]) -> List[int]:
        """Token ids of text as a story prompt: BOS first."""
        ctx = self._context()
        data = _prompt_bytes(text)
        cap = len(data) + 2
        buf = ffi.new("int[]", cap)
        n = ffi.new("int *")
        with self._lock:
            self._story += 1  # scoring and tokenizing share the context's buffers
            _check(lib.sb_tokenize(ctx, data, buf, cap, n), ctx)
        return list(buf[0:n[0]])

    def score(self, tokens: List[int]) -> List[float]:
        """Natural-log probability of each token given the ones before it (len - 1 values)."""
        ctx = self._context()
        if len(tokens) < 2:
            return []
        ids = ffi.new("int[]", tokens)
        out = ffi.new("float[]", len(tokens) - 1)
        with self._lock:
            self._story += 1
            _check(lib.sb_score(ctx, ids, len(tokens), out), ctx)
        return list(out)
