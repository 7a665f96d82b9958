"""Audio sinks for 16-bit mono PCM: speaker (PyAudio), WAV file, raw stream."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import functools
import os
import sys
import wave
from collections.abc import Iterator
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
        # Made with the mode of an ordinary file (0666 less the umask, applied by the
        # kernel), as the finished story is: nothing to change later.
        self._tmp_path = self.path.with_name(f".{self.path.name}.{os.urandom(6).hex()}.part")
        fd = os.open(self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
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


# ALSA and JACK report every device they fail to find on stderr, some thirty lines on a
# machine without a sound card, while PortAudio scans for devices; PortAudio then says the
# same in a single error. The scan runs with both libraries' messages dropped.
_ALSA_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_char_p)
_JACK_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
# Kept for the life of the process: the libraries may call them from any thread.
_ALSA_SILENT = _ALSA_HANDLER(lambda *_: None)
_JACK_SILENT = _JACK_HANDLER(lambda _: None)


@functools.cache
def _library(soname: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(soname)
    except OSError:
        return None


@contextlib.contextmanager
def _quiet_audio_libraries() -> Iterator[None]:
    """ALSA's and JACK's messages dropped for the block, restored after it."""
    alsa, jack = _library("libasound.so.2"), _library("libjack.so.0")
    if alsa is not None:
        alsa.snd_lib_error_set_handler(_ALSA_SILENT)
    if jack is not None:
        before = [ctypes.c_void_p.in_dll(jack, name).value
                  for name in ("jack_error_callback", "jack_info_callback")]
        jack.jack_set_error_function(_JACK_SILENT)
        jack.jack_set_info_function(_JACK_SILENT)
    try:
        yield
    finally:
        if alsa is not None:
            alsa.snd_lib_error_set_handler(None)  # ALSA's own: print to stderr
        if jack is not None:
            jack.jack_set_error_function(ctypes.c_void_p(before[0]))
            jack.jack_set_info_function(ctypes.c_void_p(before[1]))


def portaudio():
    """A pyaudio.PyAudio, made without ALSA's and JACK's messages about absent devices."""
    import pyaudio

    with _quiet_audio_libraries():
        return pyaudio.PyAudio()


def output_devices() -> list[tuple[int, str]]:
    """(index, name) of every PortAudio device that can play sound."""
    pa = portaudio()
    try:
        return _devices(pa, "output")
    finally:
        pa.terminate()


def find_output_device(device: int | str | None = None) -> tuple[int, str]:
    """Resolve device to (index, name), as find_device does for an output."""
    pa = portaudio()
    try:
        return find_device(pa, device, "output")
    finally:
        pa.terminate()


def _devices(pa, direction: str) -> list[tuple[int, str]]:
    channels = "maxOutputChannels" if direction == "output" else "maxInputChannels"
    infos = (pa.get_device_info_by_index(i) for i in range(pa.get_device_count()))
    return [(int(d["index"]), d["name"]) for d in infos if d[channels] > 0]


def find_device(pa, device: int | str | None, direction: str = "output") -> tuple[int, str]:
    """The (index, name) of a PortAudio device of pa for direction ("output" or "input").

    device: None for the default, an index (int, or a str of digits as a command line
    gives it), or part of a device name (case-insensitive).

    Raises AudioDeviceError if there is no such device.
    """
    if device is None:
        try:
            info = (pa.get_default_output_device_info() if direction == "output"
                    else pa.get_default_input_device_info())
        except OSError as err:
            raise AudioDeviceError(f"No default audio {direction} device") from err
        return int(info["index"]), info["name"]
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    devices = _devices(pa, direction)
    if isinstance(device, int):
        matches = [d for d in devices if d[0] == device]
    else:
        matches = [d for d in devices if device.lower() in d[1].lower()]
    if not matches:
        known = ", ".join(f"{i}: {name}" for i, name in devices) or "none"
        raise AudioDeviceError(f"No {direction} device {device!r} ({direction} devices: {known})")
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

        self._pa = portaudio()
        try:
            index, device_name = find_device(self._pa, self.device, "output")
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
