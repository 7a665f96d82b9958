"""One-machine storytelling: text pieces -> sentences -> Piper -> an audio sink."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

from .audio import AudioSink
from .sentences import DEFAULT_MAX_CHARS, SentenceBuffer
from .speech import Audio

_LOGGER = logging.getLogger(__name__)

# How often a stage blocked on a queue looks at the cancel flag (s).
_POLL_SECONDS = 0.05
# Marks the end of the story in both queues.
_END = object()


@dataclass(frozen=True)
class TellSettings:
    """How the pipeline buffers and paces a story."""

    max_sentence_chars: int = DEFAULT_MAX_CHARS
    """Longest sentence handed to the voice (characters); run-ons are cut at a space."""
    sentence_queue_size: int = 8
    """Finished sentences that may wait for synthesis (count); generation waits only when full."""
    audio_queue_size: int = 2
    """Synthesized sentences that may wait for the sink (count); bounds the audio held ahead."""
    write_block_seconds: float = 0.1
    """Audio goes to the sink in blocks this long (s), so a cancel cuts a sentence short."""


class Synth(Protocol):
    """What tell needs from a voice (robot.speech.Synthesizer)."""

    sample_rate: int

    def synthesize(self, text: str) -> Audio: ...


@dataclass
class SentenceTiming:
    """One sentence's way through the pipeline; times are seconds since tell started."""

    index: int
    text: str
    ready_at: float
    """When the sentence buffer finished the sentence."""
    synthesized_at: float | None = None
    synth_seconds: float = 0.0
    """Time Piper took for this sentence (s)."""
    audio_seconds: float = 0.0
    """Duration of its audio (s)."""
    play_start: float | None = None
    play_end: float | None = None
    """When its last block was written (or playback was cut)."""

    @property
    def rtf(self) -> float:
        """Synthesis time over audio duration."""
        return self.synth_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass
class TellReport:
    """What happened while telling one story, with the stages timed apart."""

    sink: str
    tokens: int = 0
    """Pieces taken from the generator."""
    generation_seconds: float = 0.0
    """Time spent inside the pieces iterator only, so speech does not count (s)."""
    generation_blocked_seconds: float = 0.0
    """Time generation waited for room in the full sentence queue (s)."""
    first_audio_seconds: float | None = None
    """From the start to the first audio handed to the sink (s)."""
    playback_seconds: float = 0.0
    """Time spent writing to the sink, closing it included (s)."""
    total_seconds: float = 0.0
    cancelled: bool = False
    sentences: list[SentenceTiming] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.generation_seconds if self.generation_seconds else 0.0

    @property
    def audio_seconds(self) -> float:
        return sum(s.audio_seconds for s in self.sentences)

    @property
    def synth_seconds(self) -> float:
        return sum(s.synth_seconds for s in self.sentences)

    @property
    def rtf(self) -> float:
        return self.synth_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def gaps(self) -> list[float]:
        """Idle time of the sink before each played sentence after the first (s)."""
        played = [s for s in self.sentences if s.play_start is not None]
        return [b.play_start - a.play_end for a, b in zip(played, played[1:])]

    def summary_line(self) -> str:
        gaps = self.gaps
        first = f"{self.first_audio_seconds:.2f} s" if self.first_audio_seconds is not None else "-"
        played = sum(s.play_start is not None for s in self.sentences)
        return (
            f"{len(self.sentences)} sentences, {played} played; generation {self.tokens} tokens at "
            f"{self.tokens_per_second:.1f} tok/s; speech {self.audio_seconds:.1f} s "
            f"synthesized in {self.synth_seconds:.2f} s (rtf {self.rtf:.3f}); "
            f"first audio {first}; playback {self.playback_seconds:.1f} s; "
            f"gaps {sum(gaps):.2f} s total, {max(gaps, default=0.0):.2f} s max; "
            f"total {self.total_seconds:.1f} s" + (" (cancelled)" if self.cancelled else "")
        )

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        for entry, sentence in zip(data["sentences"], self.sentences):
            entry["rtf"] = sentence.rtf
        data.update(
            tokens_per_second=self.tokens_per_second,
            audio_seconds=self.audio_seconds,
            synth_seconds=self.synth_seconds,
            rtf=self.rtf,
            gaps=self.gaps,
        )
        return json.dumps(data)


def tell(
    pieces: Iterable[str],
    synth: Synth,
    sink: AudioSink,
    *,
    settings: TellSettings = TellSettings(),
    cancel: threading.Event | None = None,
    on_sentence: Callable[[str], None] | None = None,
) -> TellReport:
    """Speak a story while it is being generated; return how it went.

    Generation (iterating pieces) and synthesis run in worker threads; playback runs
    in the calling thread, so Ctrl-C lands there. Sentence N+1 is synthesized while
    sentence N plays. tell opens the sink at the voice's sample rate and closes it at
    the end; when cancel is set it stops within one sentence, aborts the sink, and
    returns a report marked cancelled. On an error or KeyboardInterrupt it stops the
    same way and re-raises. No thread is left running, and the pieces iterator is
    closed if it has close(). on_sentence(text) is called in the calling thread just
    before a sentence starts playing.
    """
    return _Telling(synth, sink, settings, cancel, on_sentence).run(pieces)


class _Telling:
    """The state of one tell() call, shared by its three stages."""

    def __init__(self, synth, sink, settings, cancel, on_sentence) -> None:
        self.synth = synth
        self.sink = sink
        self.settings = settings
        self.cancel = cancel
        self.on_sentence = on_sentence
        # Set on error or interrupt, so every stage winds down as on a cancel.
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.sentence_queue: queue.Queue = queue.Queue(settings.sentence_queue_size)
        self.audio_queue: queue.Queue = queue.Queue(settings.audio_queue_size)
        self.report = TellReport(sink=sink.name)
        self.started = time.perf_counter()

    def run(self, pieces: Iterable[str]) -> TellReport:
        self.sink.open(self.synth.sample_rate)
        workers = [
            threading.Thread(target=self._guard, args=(self._generate, pieces), name="generate"),
            threading.Thread(target=self._guard, args=(self._synthesize,), name="synthesize"),
        ]
        for worker in workers:
            worker.start()
        try:
            finished = self._play()
        except BaseException:
            self._wind_down(workers)
            self.sink.abort()
            raise
        self._wind_down(workers)
        if self.errors:
            self.sink.abort()
            raise self.errors[0]
        if finished:
            started = time.perf_counter()
            self.sink.close()  # a speaker drains its buffer here
            self.report.playback_seconds += time.perf_counter() - started
        else:
            self.sink.abort()
            self.report.cancelled = True
        self.report.total_seconds = self._now()
        self._log_report()
        return self.report

    def _wind_down(self, workers: list[threading.Thread]) -> None:
        self.stop.set()  # wakes workers still waiting on a queue after a cancel
        for worker in workers:
            worker.join()

    def _halted(self) -> bool:
        return self.stop.is_set() or (self.cancel is not None and self.cancel.is_set())

    def _now(self) -> float:
        return time.perf_counter() - self.started

    def _guard(self, stage: Callable[..., None], *args: Any) -> None:
        try:
            stage(*args)
        except BaseException as err:  # handed to the calling thread, which re-raises it
            _LOGGER.debug("%s failed", threading.current_thread().name, exc_info=True)
            self.errors.append(err)
            self.stop.set()

    def _put(self, q: queue.Queue, item: object) -> bool:
        """Put item, waiting for room unless halted; False if halted."""
        while not self._halted():
            try:
                q.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, q: queue.Queue) -> Any:
        """Next item, or None once halted."""
        while not self._halted():
            try:
                return q.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                pass
        return None

    def _generate(self, pieces: Iterable[str]) -> None:
        buffer = SentenceBuffer(self.settings.max_sentence_chars)
        iterator = iter(pieces)
        try:
            while not self._halted():
                started = time.perf_counter()
                piece = next(iterator, _END)
                self.report.generation_seconds += time.perf_counter() - started
                if piece is _END:
                    if self._send(buffer.flush()):
                        self._put(self.sentence_queue, _END)
                    return
                self.report.tokens += 1
                if not self._send(buffer.feed(piece)):
                    return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _send(self, sentences: list[str]) -> bool:
        for text in sentences:
            timing = SentenceTiming(len(self.report.sentences), text, self._now())
            self.report.sentences.append(timing)
            started = time.perf_counter()
            sent = self._put(self.sentence_queue, timing)
            self.report.generation_blocked_seconds += time.perf_counter() - started
            if not sent:
                return False
        return True

    def _synthesize(self) -> None:
        while (timing := self._get(self.sentence_queue)) is not None:
            if timing is _END:
                self._put(self.audio_queue, _END)
                return
            audio = self.synth.synthesize(timing.text)
            timing.synth_seconds = audio.synth_seconds
            timing.audio_seconds = audio.seconds
            timing.synthesized_at = self._now()
            _LOGGER.info(
                "Synthesis %d: %.2f s of audio in %.3f s (rtf %.3f)",
                timing.index,
                audio.seconds,
                audio.synth_seconds,
                audio.rtf,
            )
            if not self._put(self.audio_queue, (timing, audio)):
                return

    def _play(self) -> bool:
        """Write audio to the sink until the end (True) or a cancel (False)."""
        block = max(1, round(self.synth.sample_rate * self.settings.write_block_seconds)) * 2
        while (item := self._get(self.audio_queue)) is not None:
            if item is _END:
                return True
            timing, audio = item
            if self.on_sentence is not None:
                self.on_sentence(timing.text)
            timing.play_start = self._now()
            if self.report.first_audio_seconds is None and audio.pcm:
                self.report.first_audio_seconds = timing.play_start
            for offset in range(0, len(audio.pcm), block):
                if self._halted():
                    break
                self.sink.write(audio.pcm[offset : offset + block])
            timing.play_end = self._now()
            self.report.playback_seconds += timing.play_end - timing.play_start
        return False

    def _log_report(self) -> None:
        report = self.report
        _LOGGER.info(
            "Generation: %d tokens in %.2f s, %.1f tokens/s (speech excluded), %.2f s blocked",
            report.tokens,
            report.generation_seconds,
            report.tokens_per_second,
            report.generation_blocked_seconds,
        )
        _LOGGER.info(
            "Synthesis: %d sentences, %.1f s of audio in %.2f s (rtf %.3f)",
            len(report.sentences),
            report.audio_seconds,
            report.synth_seconds,
            report.rtf,
        )
        gaps = report.gaps
        _LOGGER.info(
            "Playback on %s: %.1f s, first audio after %s s, gaps %.2f s total, %.2f s max",
            report.sink,
            report.playback_seconds,
            "-" if report.first_audio_seconds is None else f"{report.first_audio_seconds:.2f}",
            sum(gaps),
            max(gaps, default=0.0),
        )
