"""The story engine: a thin Python face on the native library (robot._native, cffi).

This is the only module that touches ``lib``. A story is a generator of tokens; the
library releases the GIL inside each call, so a worker thread can generate while other
threads synthesize and play audio. Stories are numbered, so that a stop names the story
it is for and is kept even when it comes before that story starts.
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
    mem_limit: int = 0
    """Bytes the engine may allocate for its buffers (weight copies, KV cache, activations,
    logits), checked before allocating; 0: what the machine can give when the model is
    opened (the least of physical RAM, MemAvailable and the cgroup's memory.max headroom)."""


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
    context ran out, possibly mid-sentence) or "stopped" (stop() ended it)."""

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
    if not 0 <= params.mem_limit < 2**63:
        raise ValueError(f"mem_limit {params.mem_limit} must be in [0, 2**63)")
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
    p.mem_limit = params.mem_limit
    return p


def _prompt_bytes(prompt: Union[str, bytes, None]) -> bytes:
    if prompt is None:
        return b""
    data = prompt.encode("utf-8", "surrogateescape") if isinstance(prompt, str) else bytes(prompt)
    if b"\0" in data:
        raise ValueError("prompt contains a NUL character")
    return data


_FIXED = ("kernels", "n_threads", "kv_fp16", "mem_limit")  # chosen when the model is opened


class Engine:
    """A loaded model and tokenizer; tells one story at a time.

    One lock covers every call that uses the context's buffers (starting a story, each
    of its tokens, tokenize(), score(), close()), so threads may share an engine; a
    story started (or a tokenize()/score()) by another thread ends the older story's
    generator with an EngineError. stop() takes no lock: it is heard mid-token.
    """

    def __init__(self, model: PathLike, tokenizer: PathLike, params: Params = Params()):
        err = ffi.new("char[]", 256)
        out = ffi.new("sb_context **")
        self.params = params
        status = lib.sb_open(os.fsencode(model), os.fsencode(tokenizer), _native_params(params),
                             out, err, 256)
        if status != lib.SB_OK:
            raise EngineError(status, ffi.string(err).decode("utf-8", "replace"))
        self._ctx = ffi.gc(out[0], lib.sb_free)
        self._lock = threading.Lock()  # the context's buffers
        self._life = threading.Lock()  # close() against stop()
        self._epoch = 0  # bumped by each use of the buffers; an older story then refuses to go on
        self._numbers = threading.Lock()
        self._last_number = 0  # the highest story number handed out
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
        """Frees the native context now rather than at garbage collection; a story being
        generated in another thread first finishes its token."""
        with self._lock, self._life:
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

    def new_story(self) -> int:
        """A number for the next story, higher than any before: give it to tokens() or
        generate(), and stop(number) ends that story even if it has not started yet."""
        with self._numbers:
            self._last_number += 1
            return self._last_number

    def tokens(self, prompt: Union[str, bytes, None] = None,
               params: Optional[Params] = None, story: Optional[int] = None) -> Iterator[Token]:
        """Starts a story and yields its tokens; the prompt's own tokens come first.

        story: its number from new_story() (a story told in several contexts may reuse
        it); None takes a new one.
        """
        if params is not None and any(getattr(params, f) != getattr(self.params, f)
                                      for f in _FIXED):
            raise ValueError("kernels, threads, the KV cache type and the memory limit are "
                             "chosen when the engine is created")
        if story is None:
            story = self.new_story()
        elif not 0 < story <= self._last_number:
            raise ValueError(f"story {story} was not numbered by new_story()")
        with self._lock:
            ctx = self._context()
            _check(lib.sb_reset(ctx, _native_params(params or self.params)), ctx)
            self.params = params or self.params
            _check(lib.sb_start(ctx, story, _prompt_bytes(prompt)), ctx)
            self._epoch += 1
            epoch = self._epoch
        return self._run(epoch)

    def _run(self, epoch: int) -> Iterator[Token]:
        tok = ffi.new("sb_token *")
        stats = self.stats = Stats()
        start = time.perf_counter()
        while True:
            with self._lock:
                if epoch != self._epoch:
                    raise EngineError(lib.SB_ERR_STATE, "another story started on this engine")
                ctx = self._context()
                status = _check(lib.sb_next(ctx, tok), ctx)
                piece = ffi.unpack(tok.piece, tok.piece_len)  # valid until the next call
            now = time.perf_counter() - start
            stats.seconds = now
            stats.tokens = tok.pos
            if status == lib.SB_END:
                stats.finish_reason = ("stopped" if tok.flags & lib.SB_END_STOPPED
                                       else self._finish_reason(tok.pos))
                return
            stats.token_times.append(now)
            if tok.pos == 1:
                stats.first_token_seconds = now
            from_prompt = bool(tok.flags & lib.SB_PIECE_PROMPT)
            if from_prompt:
                stats.prompt_tokens += 1
            yield Token(tok.id, tok.pos, piece, not tok.flags & lib.SB_PIECE_UNPRINTABLE,
                        from_prompt)

    def _finish_reason(self, pos: int) -> str:
        steps = self.params.steps
        budget = self.info.seq_len if steps == 0 or steps > self.info.seq_len else steps
        return "length" if pos >= budget else "end"

    def generate(self, prompt: Union[str, bytes, None] = None,
                 params: Optional[Params] = None, story: Optional[int] = None) -> Iterator[str]:
        """Starts a story and yields its text in pieces, each whole UTF-8 characters.

        Byte tokens are joined into the characters they spell (the reference CLI drops
        them) and control bytes are dropped, so the text is clean for speech.
        """
        decoder = codecs.getincrementaldecoder("utf-8")("ignore")
        for token in self.tokens(prompt, params, story):
            if len(token.piece) == 1 and token.piece[0] < 0x80 and not token.printable:
                continue
            text = decoder.decode(token.piece)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def stop(self, story: Optional[int] = None) -> None:
        """Ends story `story` and every one numbered before it, after the token being
        computed, or at its start if it has not started yet; None: every story numbered
        so far. Safe from any thread."""
        number = self._last_number if story is None else story
        with self._life:
            if self._ctx is not None and number > 0:
                lib.sb_stop(self._ctx, number)

    def tokenize(self, text: Union[str, bytes]) -> List[int]:
        """Token ids of text as a story prompt: BOS first."""
        data = _prompt_bytes(text)
        cap = len(data) + 2
        buf = ffi.new("int[]", cap)
        n = ffi.new("int *")
        with self._lock:
            ctx = self._context()
            self._epoch += 1  # scoring and tokenizing share the context's buffers
            _check(lib.sb_tokenize(ctx, data, buf, cap, n), ctx)
        return list(buf[0:n[0]])

    def score(self, tokens: List[int]) -> List[float]:
        """Natural-log probability of each token given the ones before it (len - 1 values)."""
        if len(tokens) < 2:
            self._context()
            return []
        ids = ffi.new("int[]", tokens)
        out = ffi.new("float[]", len(tokens) - 1)
        with self._lock:
            ctx = self._context()
            self._epoch += 1
            _check(lib.sb_score(ctx, ids, len(tokens), out), ctx)
        return list(out)
