"""Tests of the audio sinks: WAV files, raw PCM, and a real PortAudio stream."""

import io
import logging
import math
import os
import subprocess
import sys
import wave
from array import array

import pytest

from robot.audio import (
    AudioDeviceError,
    PyAudioSink,
    RawSink,
    WavSink,
    default_sink,
    find_device,
    find_output_device,
    output_devices,
    portaudio,
)
from conftest import REPO

RATE = 22050


def tone(seconds: float = 0.5, hz: float = 440.0) -> bytes:
    n = int(RATE * seconds)
    samples = (int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    return array("h", samples).tobytes()


@pytest.fixture
def alsa(tmp_path, monkeypatch):
    """Point ALSA at a config of our own (never the user's ~/.asoundrc); returns a writer.

    ALSA_CONFIG_PATH replaces the whole system configuration, and PortAudio rereads
    it each time a PyAudio object is created, so every test gets exactly the devices
    its config defines, on a machine with or without a sound card.
    """
    pytest.importorskip("pyaudio")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")  # PortAudio's JACK backend must not spawn one

    def use(config: str) -> None:
        path = tmp_path / "asound.conf"
        path.write_text(config)
        monkeypatch.setenv("ALSA_CONFIG_PATH", str(path))

    return use


NULL_DEVICE = "pcm.!default { type null }\n"
NO_DEVICE = 'pcm.!default { type hw card "no_such_card" }\n'


def recording_device(path) -> str:
    """A default device that plays into nothing and keeps what it was given in path."""
    return (f'pcm.!default {{ type file slave {{ pcm {{ type null }} }} file "{path}" '
            'format "raw" }\n')


def test_wav_round_trip(tmp_path):
    path = tmp_path / "story.wav"
    sink = WavSink(path)
    sink.open(RATE)
    pcm = tone()
    sink.write(pcm[:1000])
    sink.write(pcm[1000:])
    assert not path.exists()  # only the temporary file exists while writing
    sink.close()
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.readframes(wav.getnframes()) == pcm
    assert [p.name for p in tmp_path.iterdir()] == ["story.wav"]


def test_a_wav_gets_the_mode_of_an_ordinary_file_without_touching_the_umask(
        tmp_path, monkeypatch):
    def umask(_):
        raise AssertionError("os.umask sets the mask of every thread")

    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", umask)
        sink = WavSink(tmp_path / "story.wav")
        sink.open(RATE)
        sink.write(tone(0.1))
        sink.close()
    finally:
        monkeypatch.undo()
        os.umask(previous)
    assert (tmp_path / "story.wav").stat().st_mode & 0o777 == 0o640


def test_wav_abort_leaves_no_file(tmp_path):
    sink = WavSink(tmp_path / "story.wav")
    sink.open(RATE)
    sink.write(tone())
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_wav_abort_keeps_an_older_file(tmp_path):
    path = tmp_path / "story.wav"
    path.write_bytes(b"older story")
    sink = WavSink(path)
    sink.open(RATE)
    sink.write(tone())
    sink.abort()
    assert path.read_bytes() == b"older story"


def test_raw_sink_writes_pcm_and_leaves_the_stream_open():
    stream = io.BytesIO()
    sink = RawSink(stream)
    sink.open(RATE)
    sink.write(b"\x01\x00")
    sink.write(b"\x02\x00")
    sink.close()
    assert stream.getvalue() == b"\x01\x00\x02\x00" and not stream.closed


def test_pyaudio_plays_the_audio_on_the_device(alsa, tmp_path):
    played = tmp_path / "played.raw"
    alsa(recording_device(played))
    sink = PyAudioSink()
    sink.open(RATE)
    pcm = tone()
    sink.write(pcm)
    sink.close()
    assert played.read_bytes() == pcm  # every sample, in order, and nothing else


def test_pyaudio_abort_drops_what_was_not_played(alsa, tmp_path):
    played = tmp_path / "played.raw"
    alsa(recording_device(played))
    sink = PyAudioSink("default")
    sink.open(RATE)
    pcm = tone(0.1)
    sink.write(pcm)
    sink.abort()
    assert pcm.startswith(played.read_bytes())
    assert sink._stream is None and sink._pa is None


def test_devices_by_index_and_name(alsa):
    alsa(NULL_DEVICE)
    devices = output_devices()
    index, name = devices[0]
    assert find_output_device() == (index, name)
    assert find_output_device(index) == (index, name)
    assert find_output_device(str(index)) == (index, name)
    assert find_output_device(name[1:3].upper()) == (index, name)
    with pytest.raises(AudioDeviceError, match="output devices"):
        find_output_device("no such speaker")
    with pytest.raises(AudioDeviceError):
        find_output_device(999)


def test_input_devices_are_found_as_outputs_are(alsa):
    alsa(NULL_DEVICE)
    pa = portaudio()
    try:
        index, name = find_device(pa, None, "input")
        assert find_device(pa, name.upper(), "input") == (index, name)
        with pytest.raises(AudioDeviceError, match="input devices: "):
            find_device(pa, "no such microphone", "input")
    finally:
        pa.terminate()


def test_no_sound_card_is_said_in_one_line(alsa, tmp_path):
    # ALSA and JACK write to the process's stderr, so the probe runs in a process of its own.
    alsa(NO_DEVICE)
    probe = ("import logging; logging.basicConfig(level=logging.INFO); "
             "from robot.audio import default_sink; default_sink('story.wav')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "WARNING:robot.audio:No speaker (No default audio output device); "
        "writing the story to story.wav instead"]


def test_default_sink_is_the_speaker_when_there_is_one(alsa):
    alsa(NULL_DEVICE)
    assert isinstance(default_sink(), PyAudioSink)


def test_default_sink_falls_back_to_wav_without_a_device(alsa, tmp_path, caplog):
    # A default that names no card. (An empty config would trip an assertion in PortAudio.)
    alsa(NO_DEVICE)
    with caplog.at_level(logging.WARNING, logger="robot.audio"):
        sink = default_sink(tmp_path / "story.wav")
    assert isinstance(sink, WavSink) and sink.path == tmp_path / "story.wav"
    assert "No speaker" in caplog.text


def test_default_sink_falls_back_to_wav_without_pyaudio(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)  # makes "import pyaudio" fail
    assert isinstance(default_sink(tmp_path / "story.wav"), WavSink)


def test_the_microphone_finds_its_device_as_the_speaker_does():
    from robot.audio import AudioDeviceError
    from robot.listen import PyAudioMic

    with pytest.raises(AudioDeviceError):
        PyAudioMic("no such microphone").open()
