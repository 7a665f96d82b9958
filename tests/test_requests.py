"""Children's requests (tests/data/requests.tsv), spoken by Piper's joe voice and
espeak-ng at two speeds, streamed as the microphone through the real English recognizer
and shaped as the board shapes a transcript: every opening is grammatical and clean.
One request also goes through the whole appliance on loopback (voice host, board,
story, Piper), as tests/test_e2e_appliance.py does in Korean.

How often the requested subject survives is measured, not asserted here:
python -m robot.dev.listenbench (README, "Listening").
"""

import asyncio
import logging
import re

import pytest
from test_board import engine, running_board, told  # noqa: F401  (engine is a fixture)
from test_voicehost import voice_host

from openings import grammatical
from buttonlines import FakeLine
from robot.button import ButtonSettings
from robot.listen import WavMic
from robot.dev.listenbench import (
    RECOGNIZERS, VOICES, Voices, hear, keeps, load_requests, open_recognizer)
from robot.wordfilter import WordFilter

pytest.importorskip("pocketsphinx")

REQUESTS = load_requests()
WORDS = WordFilter.default()
# A quick few: a subject, two characters, a name and a place, filler, and no request.
FAST = ["tell me a story about a frog", "can you tell me a story about a princess and a frog",
        "a story about a dragon named max", "um uh a story about um a turtle",
        "tell me a story about an owl in the forest", "i am hungry"]


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    return Voices(tmp_path_factory.mktemp("said"))


@pytest.fixture(scope="module")
def recognizers():
    return {name: open_recognizer(name) for name in ("pocketsphinx", "pocketsphinx-unbiased")}


def test_the_request_set_is_child_like_and_big_enough():
    assert len(REQUESTS) >= 40
    assert sum(len(r.subjects) == 2 for r in REQUESTS) >= 5  # two characters
    assert sum(not r.subjects for r in REQUESTS) >= 5  # not requests, or no subject
    assert any(not WORDS.is_clean(r.said) for r in REQUESTS)  # a blocked word said
    assert set(FAST) <= {r.said for r in REQUESTS}
    assert {"pocketsphinx", "pocketsphinx-unbiased"} <= set(RECOGNIZERS)


def _check(recognizer, voices, voice, said):
    text, shaped, _ = hear(recognizer, voices.wav(voice, said), WORDS)
    assert grammatical(shaped.opening), (said, text, shaped.opening)
    assert WORDS.is_clean(shaped.opening), (said, text, shaped.opening)
    return shaped


@pytest.mark.parametrize("said", FAST)
def test_a_few_requests_heard_by_the_biased_recognizer(recognizers, voices, said):
    _check(recognizers["pocketsphinx"], voices, "joe", said)


def test_a_clear_request_keeps_its_subject(recognizers, voices):
    shaped = _check(recognizers["pocketsphinx"], voices, "joe", "tell me a story about a frog")
    assert keeps(shaped, ("frog",)), shaped.opening


@pytest.mark.slow
@pytest.mark.parametrize("voice", list(VOICES))
@pytest.mark.parametrize("recognizer", ["pocketsphinx", "pocketsphinx-unbiased"])
def test_every_request_by_every_voice(recognizers, voices, recognizer, voice):
    for request in REQUESTS:
        _check(recognizers[recognizer], voices, voice, request.said)


@pytest.mark.asyncio
async def test_a_spoken_english_request_becomes_a_story_about_its_subject(
        engine, recognizers, voices, tmp_path, caplog):  # noqa: F811
    """The appliance end to end on loopback, as tests/test_e2e_appliance.py does in Korean."""
    caplog.set_level(logging.INFO)
    said = voices.wav("joe", "can you tell me a story about a princess and a frog")
    line = FakeLine()
    async with voice_host(tmp_path, recognizer=recognizers["pocketsphinx"],
                          mic_factory=lambda: WavMic(said)) as (_, voice_port):
        async with running_board(engine, voice_port=voice_port, line=line,
                                 button=ButtonSettings(line=0)) as (board, _):
            line.level = True  # a short press on the button
            await asyncio.sleep(0.15)
            line.level = False
            story = await told(board, timeout=90)
    assert story.shaped.opening == "Once upon a time, there was a princess and a frog."
    assert story.sentences[0] == story.shaped.opening  # what was understood is said first
    assert re.search(r"Heard '.*frog' \(recognizer confidence \d", caplog.text)
