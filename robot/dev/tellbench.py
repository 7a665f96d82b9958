"""storybot bench --tell: what a listener notices (time to first audio, gaps between
sentences) for each model, into a WAV file and into a sink paced like a speaker."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .. import models
from ..wordfilter import WordFilter

# What the lead asked of the robot (reported by the bench, not enforced).
TARGET_FIRST_AUDIO_SECONDS = 0.5
TARGET_MAX_GAP_SECONDS = 0.05


class PacedSink:
    """Stands for a speaker: each write returns when its audio would have played.

    A clock of the audio written so far is kept, so sleep overshoot does not add up
    and a late write (the speaker ran dry) starts the clock again from now.
    """

    name = "paced"

    def __init__(self) -> None:
        self._sample_rate = 0
        self._played_until = 0.0

    def open(self, sample_rate: int) -> None:
        self._sample_rate = sample_rate
        self._played_until = time.perf_counter()

    def write(self, pcm: bytes) -> None:
        now = time.perf_counter()
        self._played_until = max(self._played_until, now) + len(pcm) / (2 * self._sample_rate)
        time.sleep(max(0.0, self._played_until - now))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def run_tell_bench(
    model: str = models.DEFAULT_MODEL,
    tokenizer: str = models.DEFAULT_TOKENIZER,
    voice: str | None = None,
    *,
    prompt: str | None = "Once upon a time",
    seed: int = 123,
    temperature: float = 1.0,
    topp: float = 0.9,
    steps: int = 256,
    kernels: str = "auto",
    sinks: tuple[str, ...] = ("wav", "paced"),
) -> dict:
    """Tell one story into each sink ("wav": a file, "paced": real time like a speaker).

    Measures what a listener notices: the time from the prompt to the first audio and
    the silences between sentences, next to generation speed and synthesis RTF. The
    voice speaks one word before the runs, as a robot waiting for a request has.
    """
    from ..audio import WavSink
    from ..engine import Engine, Params
    from ..speech import Synthesizer
    from ..story import Story
    from ..tell import tell

    model_path = models.find(model)
    started = time.perf_counter()
    engine = Engine(model_path, models.find(tokenizer), Params(kernels=kernels))
    engine_seconds = time.perf_counter() - started
    started = time.perf_counter()
    synth = Synthesizer(voice)
    voice_seconds = time.perf_counter() - started
    synth.synthesize("Hello.")
    params = Params(temperature=temperature, topp=topp, seed=seed, steps=steps, kernels=kernels)
    words = WordFilter.default()
    runs = {}
    with engine, tempfile.TemporaryDirectory() as tmp:
        for kind in sinks:
            sink = WavSink(Path(tmp) / "story.wav") if kind == "wav" else PacedSink()
            report = tell(Story(engine, prompt, params, word_filter=words), synth, sink)
            runs[kind] = _bench_run(report)
    return {
        "model": str(model_path), "voice": str(synth.voice_path),
        "kernels": engine.info.kernels, "prompt": prompt, "seed": seed, "steps": steps,
        "engine_load_seconds": engine_seconds, "voice_load_seconds": voice_seconds,
        "targets": {"first_audio_seconds": TARGET_FIRST_AUDIO_SECONDS,
                    "max_gap_seconds": TARGET_MAX_GAP_SECONDS},
        "runs": runs,
    }


def _bench_run(report) -> dict:
    gaps = report.gaps
    first = report.first_audio_seconds
    # The pace at which the voice consumes the story, to compare generation with.
    speech_tps = report.tokens / report.audio_seconds if report.audio_seconds else 0.0
    return {
        "sink": report.sink,
        "sentences": len(report.sentences),
        "tokens": report.tokens,
        "first_audio_seconds": first,
        "max_gap_seconds": max(gaps, default=0.0),
        "mean_gap_seconds": sum(gaps) / len(gaps) if gaps else 0.0,
        "gaps": gaps,
        "tokens_per_second": report.tokens_per_second,
        "speech_tokens_per_second": speech_tps,
        "synth_rtf": report.rtf,
        "audio_seconds": report.audio_seconds,
        "total_seconds": report.total_seconds,
        "first_audio_met": first is not None and first <= TARGET_FIRST_AUDIO_SECONDS,
        "gaps_met": max(gaps, default=0.0) <= TARGET_MAX_GAP_SECONDS,
        "generation_faster_than_speech": report.tokens_per_second > speech_tps,
    }


_COLUMNS = (
    # (heading, key, format)
    ("sink", "sink", "{}"),
    ("sentences", "sentences", "{}"),
    ("first audio s", "first_audio_seconds", "{:.3f}"),
    ("max gap s", "max_gap_seconds", "{:.3f}"),
    ("mean gap s", "mean_gap_seconds", "{:.3f}"),
    ("gen tok/s", "tokens_per_second", "{:.1f}"),
    ("speech tok/s", "speech_tokens_per_second", "{:.1f}"),
    ("synth rtf", "synth_rtf", "{:.3f}"),
    ("audio s", "audio_seconds", "{:.1f}"),
    ("total s", "total_seconds", "{:.1f}"),
    ("first<=0.5s", "first_audio_met", "{}"),
    ("gaps<=50ms", "gaps_met", "{}"),
)


def tell_bench_table(result: dict) -> str:
    """run_tell_bench's runs as a text table, one row per sink."""
    rows = [[heading for heading, _, _ in _COLUMNS]]
    for run in result["runs"].values():
        rows.append(["-" if run[key] is None else fmt.format(run[key]) for _, key, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
