"""The board's state machine with the real engine, over real loopback links."""

import asyncio
import contextlib
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from modelgen import Header
from buttonlines import FakeLine
from test_voicehost import (FAST, SECRET, free_port, start_voice_host, stop_task, voice_host,
                            wait_until)
from wyoming.event import Event

from robot import board as board_module
from robot import link
from robot.ask import ask
from robot.board import Board, BoardSettings, State
from robot.button import ButtonEvent, ButtonSettings
from robot.engine import Engine
from robot.wordfilter import WordFilter

PRESS, LONG = ButtonEvent.PRESS, ButtonEvent.LONG_PRESS
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def engine(model_path, tokenizer_path):
    # The board's own engine: it changes the engine's params, so not the shared fixture.
    with Engine(model_path, tokenizer_path) as e:
        yield e


@contextlib.asynccontextmanager
async def running_board(engine, voice_port=None, line=None, words=None, **overrides):
    port = free_port()
    settings = BoardSettings(
        control=f"127.0.0.1:{port}", steps=overrides.pop("steps", 48), link=FAST,
        voice_host=f"127.0.0.1:{voice_port}" if voice_port else None, seed=7, **overrides)
    board = Board(settings, engine, line=line, words=words or WordFilter.default(),
                  secret=SECRET)
    task = asyncio.create_task(board.run())
    await asyncio.wait_for(board.ready.wait(), 5)
    if voice_port:
        await asyncio.wait_for(board._voice.up.wait(), 10)
    try:
        yield board, f"127.0.0.1:{port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def told(board, story_id=None, timeout=30):
    """The story once it is over and the board idle again."""
    await wait_until(lambda: board.story is not None and board.state is State.IDLE
                     and (story_id is None or board.story.id == story_id), timeout)
    return board.story


async def press(board, event=PRESS):
    board.press(event)
    await board.settled()


@pytest.mark.asyncio
async def test_a_typed_prompt_is_told_to_the_asker(engine):
    async with running_board(engine) as (board, address):
        out = io.StringIO()
        code = await ask(address, "Once upon a time, a cat", FAST, out=out)
        story = await told(board)
    assert code == 0
    assert story.shaped.source == "passthrough"
    assert out.getvalue().splitlines() == story.sentences
    assert story.sentences[0].startswith("Once upon a time, a cat")
    assert story.stopped is None and not story.to_voice


@pytest.mark.asyncio
async def test_press_without_a_voice_host_tells_a_surprise(engine):
    async with running_board(engine) as (board, _):
        await press(board)
        story = await told(board)
    assert story.shaped.source == "surprise" and story.sentences


@pytest.mark.asyncio
async def test_long_press_tells_a_surprise_at_once(engine):
    async with running_board(engine) as (board, _):
        await press(board, LONG)
        assert board.state is State.TELLING
        story = await told(board)
    assert story.shaped.source == "surprise"


@pytest.mark.asyncio
async def test_a_press_while_telling_stops_the_story(engine):
    async with running_board(engine, steps=256) as (board, _):
        await press(board, LONG)
        await wait_until(lambda: board.story.sentences)
        await press(board)
        story = await told(board)
    assert story.stopped == "the button was pressed"
    assert board.engine.stats.tokens < 256


@pytest.mark.asyncio
async def test_a_request_while_telling_is_refused_as_busy(engine, capsys):
    async with running_board(engine, steps=256) as (board, address):
        await press(board, LONG)
        code = await ask(address, "Once upon a time", FAST, out=io.StringIO())
        await press(board)
        await told(board)
    assert code == 1
    assert "busy telling story 1" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_blocked_sentences_are_held_back(engine, caplog):
    caplog.set_level(logging.INFO)
    words = WordFilter(["the"])  # sure to come up in any story
    async with running_board(engine, words=words, steps=96) as (board, _):
        await press(board, LONG)
        story = await told(board)
    assert story.blocked > 0
    assert all(words.is_clean(s) for s in story.sentences)
    assert "Skipped a sentence with blocked words" in caplog.text


def test_transcripts_are_filtered_and_only_latin_words_reach_the_model(engine):
    board = Board(BoardSettings(control=None), engine)
    assert board._from_transcript("tell me a story about a damn dragon").opening == \
        "Once upon a time, there was a dragon."
    assert board._from_transcript("고양이 cat").opening == "Once upon a time, there was a cat."
    assert board._from_transcript("고양이 이야기").source == "surprise"


@pytest.mark.asyncio
async def test_a_spoken_prompt_story_goes_to_the_voice_host(engine, tmp_path):
    # No recognizer: the host hears nothing, answers "", and the board tells a surprise.
    async with voice_host(tmp_path) as (_, voice_port):
        async with running_board(engine, voice_port=voice_port) as (board, _):
            await press(board)
            story = await told(board)
    assert story.prompt == "" and story.shaped.source == "surprise"
    assert story.to_voice and story.voice_done and story.in_flight == 0
    assert list(tmp_path.glob("*-story1.wav"))


@pytest.mark.asyncio
async def test_a_press_while_telling_stops_the_voice_too(engine, tmp_path):
    async with voice_host(tmp_path) as (_, voice_port):
        async with running_board(engine, voice_port=voice_port, steps=256) as (board, _):
            await press(board, LONG)
            await wait_until(lambda: len(board.story.sentences) >= 2)
            await press(board)
            story = await told(board)
            await wait_until(lambda: not list(tmp_path.glob(".*.part")))
    assert story.stopped == "the button was pressed"
    assert list(tmp_path.iterdir()) == []  # the host dropped the half-spoken story


class QuietHost(link.LinkHandler):
    """A voice host that never answers a listen, and sends stale and unknown events."""

    def __init__(self, reader, writer, session):
        super().__init__(reader, writer, FAST, session)
        asyncio.get_running_loop().create_task(self._junk())

    async def _junk(self):
        for event in (Event("transcript", {"text": "late", "listen": 99}),
                      Event(link.STORY_SPOKEN, {"story": 42, "index": 0}),
                      Event(link.STORY_DONE, {"story": 42, "spoken": 1, "cancelled": False}),
                      Event("transcript", {"text": 5, "listen": 1}),
                      Event("weather", {"rain": True}),
                      Event("error", {"text": "a hiccup"})):
            await self.link.send(event)

    async def handle_event(self, event):
        return True


@pytest.mark.asyncio
async def test_listening_times_out_and_a_stuck_host_is_given_up_on(engine, caplog):
    port = free_port()
    server = link.LinkServer("127.0.0.1", port, QuietHost, FAST, SECRET)
    task = asyncio.create_task(server.run())
    try:
        async with running_board(engine, voice_port=port, listen_seconds=0.3,
                                 listen_grace_seconds=0.2,
                                 voice_timeout_seconds=0.5) as (board, _):
            await wait_until(lambda: "weather" in caplog.text)
            assert board.state is State.IDLE
            await press(board)
            assert board.state is State.LISTENING
            story = await told(board)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert story.shaped.source == "surprise" and story.prompt is None
    # The host took the sentence and never spoke it: a stuck host, given up on.
    assert story.stopped == "the voice host stopped answering"
    assert caplog.text.count("stale or out of order") == 4  # the malformed one never got here
    assert "malformed 'transcript'" in caplog.text and "reports: a hiccup" in caplog.text


@pytest.mark.asyncio
async def test_the_voice_host_dies_mid_story_and_comes_back(engine, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    voice_port = free_port()
    first = await start_voice_host(tmp_path, voice_port)
    async with running_board(engine, voice_port=voice_port, steps=256) as (board, address):
        out = io.StringIO()
        asker = asyncio.create_task(ask(address, "Once upon a time", FAST, out=out))
        await wait_until(lambda: board.story is not None and len(board.story.sentences) >= 2)
        await stop_task(first)  # killed mid-story
        story = await told(board)
        assert story.stopped == "the voice host went away"
        assert await asyncio.wait_for(asker, 10) == 0  # the asker was told the story ended
        second = await start_voice_host(tmp_path, voice_port)
        try:
            await asyncio.wait_for(board._voice.up.wait(), 10)
            await press(board, LONG)
            story = await told(board, story_id=2)
        finally:
            await stop_task(second)
    assert story.stopped is None and story.voice_done
    assert list(tmp_path.glob("*-story2.wav")) and not list(tmp_path.glob("*-story1.wav"))
    assert "Connected to" in caplog.text.split("went away")[-1]  # reconnected after the loss


@pytest.mark.asyncio
async def test_a_mashed_button_starts_one_story(engine):
    # The guard spans the whole test, so how fast the watcher samples cannot matter: the
    # first press it sees counts, every later one is swallowed.
    line = FakeLine()
    button = ButtonSettings(line=0, guard_seconds=3600)
    async with running_board(engine, line=line, button=button) as (board, _):
        while board.state is State.IDLE:  # press until the board has seen one
            line.level = True
            await asyncio.sleep(0.1)
            line.level = False
            await asyncio.sleep(0.1)
        for _ in range(12):
            line.level = True
            await asyncio.sleep(0.04)
            line.level = False
            await asyncio.sleep(0.04)
        story = await told(board)
        assert board.story is story and board.state is State.IDLE
    assert story.id == 1 and story.shaped.source == "surprise"


@pytest.mark.asyncio
async def test_a_failed_story_is_an_error_to_the_asker(tokenizer_path, tmp_path, capsys):
    # A model whose weights are all NaN: the engine refuses its first token.
    nan = tmp_path / "nan.bin"
    nan.write_bytes(Header().pack() + np.full(Header().n_floats(), np.nan, "<f4").tobytes())
    with Engine(nan, tokenizer_path) as broken:
        async with running_board(broken) as (board, address):
            code = await ask(address, "Once upon a time", FAST, out=io.StringIO())
            await told(board)
    assert code == 1
    assert "error: story 1 failed:" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_the_echoed_opening_passes_the_word_filter(engine, capsys):
    async with running_board(engine, steps=40) as (board, address):
        code = await ask(address, "Once upon a time, a damn cat", FAST, out=io.StringIO())
        await told(board)
    err = capsys.readouterr().err
    assert code == 0 and "(passthrough): Once upon a time, a cat" in err and "damn" not in err


@pytest.mark.asyncio
async def test_a_control_port_off_loopback_wants_the_pairing(engine, monkeypatch, capsys):
    # As if bound to the network (the test stays on loopback): the board seals the port.
    monkeypatch.setattr(board_module, "is_loopback", lambda host: False)
    async with running_board(engine, steps=40) as (board, address):
        refused = await ask(address, "Once upon a time", FAST, out=io.StringIO())
        wrong = ask(address, "Once upon a time", FAST, secret=b"\1" * 32)
        with pytest.raises(OSError, match="does not hold our pairing secret"):
            await wrong
        out = io.StringIO()
        told_code = await ask(address, "Once upon a time", FAST, out=out, secret=SECRET)
        story = await told(board)
    assert refused == 1 and "pair both machines" in capsys.readouterr().err
    assert told_code == 0 and out.getvalue().splitlines() == story.sentences


@pytest.mark.asyncio
async def test_storybot_ask_into_head_is_no_error(engine):
    async with running_board(engine, steps=256) as (board, address):
        proc = await asyncio.create_subprocess_shell(
            f"set -o pipefail; {sys.executable} -m robot.cli ask --board {address} "
            f"'Once upon a time' 2>&1 | head -1", executable="/bin/bash",
            stdout=asyncio.subprocess.PIPE, cwd=REPO)
        out, _ = await proc.communicate()
        await told(board, timeout=60)
    assert proc.returncode == 0, out
    assert out.decode().startswith("story 1") and b"rror" not in out
