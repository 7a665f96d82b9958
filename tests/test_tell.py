"""Tests of the one-machine pipeline with the real Piper voice."""

import json
import math
import re
import threading
import wave
from array import array

import pytest
from conftest_audio import joe_synthesizer

from robot.audio import WavSink
from robot.sentences import split_sentences
from robot.tell import TellSettings, tell

# stories15M's answer to "Once upon a time" (golden case 0), as the engine prints it.
STORY = (
    "Once upon a time, there was a little girl named Lily. One day, Lily and her mommy "
    "went to the park. They played on the swings and went down the slide. Suddenly, "
    "Lily's toy fell out of her pocket. She looked everywhere for it but couldn't find "
    "it. \nLily's mommy told her not to worry and that they would get her a new toy. But "
    "then, a boy came over and said he saw the toy in the sandbox. He had taken it! "
    "Lily's mommy knew how to get it back, so she called the police. \nThe police came "
    "and found the boy who had stolen Lily's toy. They returned it to her, but the boy "
    "was very scared and ran away. Lily's mommy explained to her that stealing is wrong "
    "and that it's important to always ask before taking something that belongs to "
    "someone else.\n"
)
# Word pieces as a tokenizer emits them: " Once", " upon", ..., "\n".
PIECES = re.findall(r"\n| ?[^ \n]+| ", STORY)


class Generator:
    """The story as a closable iterator that counts what was taken, like the engine's."""

    def __init__(self, pieces=PIECES, fail_after=None):
        self.taken = 0
        self.closed = False
        self._pieces = iter(pieces)
        self._fail_after = fail_after

    def __iter__(self):
        return self

    def __next__(self):
        if self.taken == self._fail_after:
            raise RuntimeError("engine failed")
        piece = next(self._pieces)
        self.taken += 1
        return piece

    def close(self):
        self.closed = True


class MemorySink:
    """Keeps the audio; with hold, a speaker whose writes wait until hold is set (30 s at
    most), as a slow speaker would."""

    name = "memory"

    def __init__(self, hold=None, interrupt_on_write=None, events=None):
        self.pcm = bytearray()
        self.state = "new"
        self.writes = 0
        self._hold = hold
        self._interrupt_on_write = interrupt_on_write
        self._events = events if events is not None else []

    def open(self, sample_rate):
        self.sample_rate = sample_rate
        self.state = "open"

    def write(self, pcm):
        self.writes += 1
        if self.writes == self._interrupt_on_write:
            raise KeyboardInterrupt
        if self._hold is not None:
            self._hold.wait(30)
        self.pcm += pcm
        self._events.append(("written", len(self.pcm)))

    def close(self):
        self.state = "closed"

    def abort(self):
        self.state = "aborted"


class RecordingSynth:
    """The real voice, noting in events when each sentence's audio is ready."""

    def __init__(self, synth, events, ready_text=None, ready_event=None):
        self.sample_rate = synth.sample_rate
        self._synth = synth
        self._events = events
        self.ready_text, self.ready_event = ready_text, ready_event  # set once it is ready

    def synthesize(self, text):
        audio = self._synth.synthesize(text)
        self._events.append(("synthesized", text))
        if self.ready_event is not None and text == self.ready_text:
            self.ready_event.set()
        return audio


@pytest.fixture(scope="module")
def joe():
    return joe_synthesizer()


def rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / len(samples))


@pytest.fixture
def no_new_threads():
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) == before


def test_story_is_spoken_into_a_wav(joe, tmp_path, no_new_threads):
    assert "".join(PIECES) == STORY
    path = tmp_path / "story.wav"
    spoken = []
    report = tell(Generator(), joe, WavSink(path), on_sentence=spoken.append)

    expected = split_sentences(STORY)
    assert len(expected) == 12
    assert [s.text for s in report.sentences] == spoken == expected
    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == joe.sample_rate
        frames = wav.readframes(wav.getnframes())
    assert len(frames) / 2 / joe.sample_rate == pytest.approx(report.audio_seconds, abs=1e-6)
    assert all(s.audio_seconds > 0.5 for s in report.sentences)
    assert rms(frames) > 1000

    assert report.tokens == len(PIECES) and not report.cancelled
    assert report.first_audio_seconds is not None and len(report.gaps) == 11
    assert "\n" not in report.summary_line() and "12 sentences, 12 played" in report.summary_line()
    data = json.loads(report.to_json())
    assert data["tokens"] == len(PIECES) and len(data["sentences"]) == 12
    assert {"tokens_per_second", "rtf", "gaps", "first_audio_seconds"} <= data.keys()


def test_next_sentence_is_synthesized_while_one_plays(joe, no_new_threads):
    events = []
    cancel = threading.Event()
    first, second = split_sentences(STORY)[:2]

    def on_sentence(text):
        events.append(("playing", text))
        if text == second:
            cancel.set()  # the ordering is known by now; spare the rest of the story

    # The speaker takes the first sentence only once the second is ready: if synthesis
    # waited for playback instead, the second would come after the first was written.
    second_ready = threading.Event()
    report = tell(
        Generator(),
        RecordingSynth(joe, events, ready_text=second, ready_event=second_ready),
        MemorySink(hold=second_ready, events=events),
        cancel=cancel,
        on_sentence=on_sentence,
    )
    assert report.cancelled
    second_ready = events.index(("synthesized", second))
    first_done = max(i for i, e in enumerate(events) if e[0] == "written")  # only the first played
    assert events.index(("playing", first)) < second_ready < first_done


def test_cancel_stops_within_one_sentence(joe, no_new_threads):
    cancel = threading.Event()
    started = []

    def on_sentence(text):
        started.append(text)
        if len(started) == 2:
            cancel.set()

    generator = Generator()
    sink = MemorySink()
    settings = TellSettings(sentence_queue_size=1, audio_queue_size=1)
    report = tell(generator, joe, sink, settings=settings, cancel=cancel, on_sentence=on_sentence)

    assert report.cancelled and sink.state == "aborted"
    assert len(started) == 2
    first, second = report.sentences[:2]
    assert len(sink.pcm) <= (first.audio_seconds + second.audio_seconds) * 2 * joe.sample_rate
    assert all(s.play_start is None for s in report.sentences[2:])
    assert generator.closed and generator.taken < len(PIECES)


def test_keyboard_interrupt_cleans_up_and_propagates(joe, no_new_threads):
    generator = Generator()
    sink = MemorySink(interrupt_on_write=3)
    with pytest.raises(KeyboardInterrupt):
        tell(generator, joe, sink)
    assert sink.state == "aborted" and generator.closed


def test_generation_error_propagates(joe, no_new_threads):
    generator = Generator(fail_after=30)
    sink = MemorySink()
    with pytest.raises(RuntimeError, match="engine failed"):
        tell(generator, joe, sink)
    assert sink.state == "aborted" and generator.closed
