"""Audio sinks for 16-bit mono PCM: speaker (PyAudio), WAV file, raw stream."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import wave
from pathlib import Path
from typing import BinaryIO, Protocol

_LOGGER = logging.getLogger(__name__)

_SAMPLE_WIDTH = 2  # bytes: every sink takes signed 16-bit little-endian mono


class AudioDeviceError(OSError):
    """No usable audio output device."""


class AudioSink(Protocol):
    """Where PCM goes: open once, write blocks, then close (keep) or abort (drop)."""

    name: str

    def open(self, sample_rate: int) -> None:
        """Prepare for mono int16 audio at sample_rate (Hz)."""

    def write(self, pcm: bytes) -> None:
        """Play or store pcm; a speaker blocks until the device has taken it."""

    def close(self) -> None:
        """Finish: let queued audio play out, make the file complete."""

    def abort(self) -> None:
        """Stop at once and keep nothing half-done."""


class WavSink:
    """Writes a WAV file that appears only when complete.

    Audio goes to a temporary file in the same directory, renamed over path on
    close, so an interrupted story never leaves a truncated WAV behind.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = f"wav:{self.path}"
        self._tmp_path: Path | None = None
        self._wav: wave.Wave_write | None = None

    def open(self, sample_rate: int) -> None:
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".part"
        )
        self._tmp_path = Path(tmp)
        self._wav = wave.open(os.fdopen(fd, "wb"), "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(_SAMPLE_WIDTH)
        self._wav.setframerate(sample_rate)

    def write(self, pcm: bytes) -> None:
        self._wav.writeframes(pcm)

    def close(self) -> None:
        if self._wav is None:
            return
        self._wav.close()  # also closes the file it opened from our fd
        # mkstemp made it private (0600); a finished story is an ordinary file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._tmp_path, 0o666 & ~umask)
        os.replace(self._tmp_path, self.path)
        _LOGGER.info("Wrote %s", self.path)
        self._wav = self._tmp_path = None

    def abort(self) -> None:
        if self._wav is None:
            return
        self._wav.close()
        self._tmp_path.unlink(missing_ok=True)
        self._wav = self._tmp_path = None


class RawSink:
    """Raw PCM (s16le mono) to a binary stream, stdout by default, e.g. for aplay."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        self.name = "raw"

    def open(self, sample_rate: int) -> None:
        # The stream has no header, so whoever reads it must be told the format.
        _LOGGER.info("Raw PCM: signed 16-bit little-endian, mono, %d Hz", sample_rate)

    def write(self, pcm: bytes) -> None:
        self._stream.write(pcm)

    def close(self) -> None:
        # The stream is the caller's (stdout): flush it, never close it.
        self._stream.flush()

    def abort(self) -> None:
        self._stream.flush()


def output_devices() -> list[tuple[int, str]]:
    """(index, name) of every PortAudio device that can play sound."""
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        return _output_devices(pa)
    finally:
        pa.terminate()


def find_output_device(device: int | str | None = None) -> tuple[int, str]:
    """Resolve device to (index, name).

    device: None for the default output, an index (int, or a str of digits as a
    command line gives it), or part of a device name (case-insensitive).

    Raises AudioDeviceError if there is no such output device.
    """
    import pyaudio

    pa = pyaudio.PyAudio()
    try:
        return _resolve(pa, device)
    finally:
        pa.terminate()


def _output_devices(pa) -> list[tuple[int, str]]:
    infos = (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
    return [(int(d["index"]), d["name"]) for d in infos if d["maxOutputChannels"] > 0]


def _resolve(pa, device: int | str | None) -> tuple[int, str]:
    if device is None:
        try:
            info = pa.get_default_output_device_info()
        except OSError as err:
            raise AudioDeviceError("No default audio output device") from err
        return int(info["index"]), info["name"]
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    devices = _output_devices(pa)
    if isinstance(device, int):
        matches = [d for d in devices if d[0] == device]
    else:
        matches = [d for d in devices if device.lower() in d[1].lower()]
    if not matches:
        known = ", ".join(f"{i}: {name}" for i, name in devices) or "none"
        raise AudioDeviceError(f"No output device {device!r} (output devices: {known})")
    return matches[0]


class PyAudioSink:
    """Plays through a PortAudio output device with blocking writes.

    The blocking writes are what make playback take real time: write returns once
    the device has room for the audio, so the caller is paced by the speaker.
    """

    def __init__(self, device: int | str | None = None) -> None:
        self.device = device
        self.name = "speaker" if device is None else f"speaker:{device}"
        self._pa = None
        self._stream = None

    def open(self, sample_rate: int) -> None:
        import pyaudio

        self._pa = pyaudio.PyAudio()
        try:
            index, device_name = _resolve(self._pa, self.device)
            self._stream = self._pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=sample_rate,
                output=True,
                output_device_index=index,
            )
        except BaseException:
            self._pa.terminate()
            self._pa = None
            raise
        _LOGGER.info("Playing on %s (device %d) at %d Hz", device_name, index, sample_rate)

    def write(self, pcm: bytes) -> None:
        self._stream.write(pcm)

    def close(self) -> None:
        # stop_stream waits until the buffered audio has been played.
        self._end(drain=True)

    def abort(self) -> None:
        # Closing an active stream discards its buffers (like Pa_AbortStream).
        self._end(drain=False)

    def _end(self, drain: bool) -> None:
        if self._stream is not None:
            if drain:
                self._stream.stop_stream()
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None


def default_sink(
    fallback_path: str | Path = "story.wav", device: int | str | None = None
) -> AudioSink:
    """The speaker if one can be used, else a WAV file at fallback_path."""
    try:
        index, device_name = find_output_device(device)
    except (ImportError, OSError) as err:
        _LOGGER.warning("No speaker (%s); writing the story to %s instead", err, fallback_path)
        return WavSink(fallback_path)
    _LOGGER.debug("Default sink: device %d, %s", index, device_name)
    return PyAudioSink(device)
