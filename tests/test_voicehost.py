"""The voice host with the real Piper voice: stories in over TCP, WAV files out, faults, load."""

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import threading
import types
import wave

import pytest
from conftest_audio import joe_synthesizer
from wyoming.event import Event

from robot import link
from robot.audio import WavSink
from robot import voicehost
from robot.voicehost import VoiceHost, VoiceHostSettings

FAST = link.LinkSettings(ping_seconds=0.1, dead_after_seconds=2.0, backoff_seconds=0.05,
                         max_backoff_seconds=0.2, write_timeout_seconds=1.0)
SENTENCES = ["Once upon a time, there was a cat.", "The cat liked milk.", "The end."]
SECRET = bytes(range(32))
"""The pairing secret of the test voice hosts and boards."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_voice_host(tmp_path, port, settings=FAST, **kwargs):
    """A real voice host on loopback, writing each story to a WAV file in tmp_path."""
    kwargs.setdefault("secret", SECRET)
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=port, wav_dir=str(tmp_path),
                                       link=settings), joe_synthesizer(), **kwargs)
    task = asyncio.create_task(host.run())
    await asyncio.wait_for(host.server.listening.wait(), 10)
    task.host = host
    return task


async def stop_task(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def voice_host(tmp_path, port=None, settings=FAST, **kwargs):
    port = port or free_port()
    task = await start_voice_host(tmp_path, port, settings, **kwargs)
    try:
        yield task.host, port
    finally:
        await stop_task(task)


class ScriptedBoard:
    """Speaks the board's side of the protocol from a script, and records the answers."""

    def __init__(self, port, settings=FAST, secret=SECRET, host="127.0.0.1"):
        self.events: asyncio.Queue = asyncio.Queue()
        self.client = link.LinkClient(host, port, self._handle, settings, secret=secret)
        self.task = asyncio.create_task(self.client.run())

    async def _handle(self, event):
        await self.events.put(event)
        return True

    async def send(self, kind, **data):
        await asyncio.wait_for(self.client.up.wait(), 10)
        await self.client.send(Event(kind, data))

    async def next(self, kind=None, timeout=20):
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if kind is None or event.type == kind:
                return event

    async def tell(self, story, sentences):
        """Send a whole story; return (spoken indexes in order, story-done data)."""
        await self.send(link.STORY_START, story=story, opening=sentences[0], source="test")
        for index, text in enumerate(sentences):
            await self.send(link.STORY_SENTENCE, story=story, index=index, text=text)
        await self.send(link.STORY_END, story=story, sentences=len(sentences))
        spoken = []
        while True:
            event = await self.next()
            if event.type == link.STORY_SPOKEN:
                assert event.data["story"] == story
                spoken.append(event.data)
            elif event.type == link.STORY_DONE:
                return spoken, event.data

    async def close(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def wav_seconds(path):
    with wave.open(str(path)) as w:
        assert w.getframerate() == 22050 and w.getnchannels() == 1
        return w.getnframes() / w.getframerate()


def play_threads():
    return [t for t in threading.enumerate() if t.name.startswith("play")]


async def wait_until(condition, timeout=10):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_a_story_is_spoken_in_order_into_a_wav(tmp_path):
    async with voice_host(tmp_path) as (_, port):
        board = ScriptedBoard(port)
        try:
            spoken, done = await board.tell(1, SENTENCES)
        finally:
            await board.close()
    assert [s["index"] for s in spoken] == [0, 1, 2]
    assert done == {"story": 1, "spoken": 3, "cancelled": False}
    assert all(s["synth_seconds"] > 0 for s in spoken)
    [wav] = tmp_path.glob("*-story1.wav")
    assert wav_seconds(wav) == pytest.approx(sum(s["audio_seconds"] for s in spoken), abs=0.01)


@pytest.mark.asyncio
async def test_story_stop_cuts_the_story_and_keeps_no_audio(tmp_path):
    async with voice_host(tmp_path) as (_, port):
        board = ScriptedBoard(port)
        try:
            await board.send(link.STORY_START, story=7, opening="x", source="test")
            for index, text in enumerate(SENTENCES * 3):
                await board.send(link.STORY_SENTENCE, story=7, index=index, text=text)
            await board.next(link.STORY_SPOKEN)
            await board.send(link.STORY_STOP, story=7)
            done = (await board.next(link.STORY_DONE)).data
            # The stopped story's leftovers are dropped; the next story is spoken whole.
            await board.send(link.STORY_SENTENCE, story=7, index=9, text="Late.")
            spoken, done2 = await board.tell(8, ["Hello."])
        finally:
            await board.close()
    assert done["cancelled"] and 1 <= done["spoken"] < 9
    assert done2 == {"story": 8, "spoken": 1, "cancelled": False}
    assert [p.name.split("-")[-1] for p in tmp_path.iterdir()] == ["story8.wav"]


async def raw_connection(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer


@pytest.mark.asyncio
async def test_malformed_oversized_and_out_of_order_events_are_dropped(tmp_path, caplog):
    async with voice_host(tmp_path) as (_, port):
        _, writer = await raw_connection(port)
        writer.write(b"garbage\n" + b'{"type": "x", "pad": "' + b"a" * 100_000 + b'"}\n')
        writer.write(json.dumps({"type": "audio-chunk", "payload_length": 10_000_000}).encode()
                     + b"\n" + b"\0" * 1_000_000)  # the rest never comes: the peer is cut off
        await writer.drain()
        board = ScriptedBoard(port)
        try:
            await board.send(link.STORY_SENTENCE, story=3, index=0, text="No story yet.")
            await board.send(link.STORY_START, story=4, opening="x", source="test")
            await board.send(link.STORY_SENTENCE, story=4, index=1, text="Skipped ahead.")
            await board.send(link.STORY_SENTENCE, story=4, index=0, text="Hello.")
            await board.send(link.STORY_SENTENCE, story=4, index=0, text="Again.")
            await board.send(link.STORY_END, story=99, sentences=1)
            await board.send(link.STORY_STOP, story="4")
            await board.send("dance", style="tango")
            await board.send(link.STORY_END, story=4, sentences=1)
            spoken, done = [(await board.next(link.STORY_SPOKEN)).data["index"]], \
                (await board.next(link.STORY_DONE)).data
        finally:
            await board.close()
            writer.close()
    assert spoken == [0] and done == {"story": 4, "spoken": 1, "cancelled": False}
    for message in ("malformed event line", "longer than the stream limit",
                    "oversized 'audio-chunk'", "out of order", "unexpected 'story-end'",
                    "malformed 'story-stop'", "unexpected 'dance'"):
        assert message in caplog.text, message


@pytest.mark.asyncio
async def test_a_board_that_vanishes_while_the_host_speaks(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with voice_host(tmp_path) as (host, port):
        board = ScriptedBoard(port)
        await board.send(link.STORY_START, story=1, opening="x", source="test")
        for index, text in enumerate(SENTENCES * 2):
            await board.send(link.STORY_SENTENCE, story=1, index=index, text=text)
        await board.next(link.STORY_SPOKEN)
        await board.close()  # gone mid-story, without story-end or story-stop
        await wait_until(lambda: "gone" in caplog.text and not play_threads())
        assert list(tmp_path.iterdir()) == []  # the half story was dropped, no .part left
        # The host serves the next board as before.
        board = ScriptedBoard(port)
        try:
            spoken, done = await board.tell(1, ["Hi."])
        finally:
            await board.close()
    assert done["spoken"] == 1


@pytest.mark.asyncio
async def test_a_board_that_goes_silent_is_dropped_by_the_ping_timeout(tmp_path, caplog):
    async with voice_host(tmp_path) as (host, port):
        reader, writer = await raw_connection(port)
        stream = link.Stream(reader, writer, FAST)
        board = link.SealedPeer(stream, await link.pair(stream, SECRET, is_client=True))
        for event in (Event(link.STORY_START, {"story": 1, "opening": "x"}),
                      Event(link.STORY_SENTENCE, {"story": 1, "index": 0, "text": SENTENCES[0]})):
            await board.write_event(event)
        # Then nothing: no pongs, no pings, the socket left open (a board that froze).
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_until(lambda: "taking it for dead" in caplog.text)
        assert loop.time() - started < FAST.dead_after_seconds + 3
        await wait_until(lambda: not play_threads())
        writer.close()


@pytest.mark.asyncio
async def test_sentences_over_the_limits_get_an_error_and_the_story_goes_on(tmp_path):
    told = ["Hello.", "x" * 401, "Bad \ud800 text.", "Go to hell.", "Bye."]
    async with voice_host(tmp_path) as (_, port):
        board = ScriptedBoard(port)
        try:
            await board.send(link.STORY_START, story=1, opening="x", source="test")
            for index, text in enumerate(told):
                await board.send(link.STORY_SENTENCE, story=1, index=index, text=text)
            await board.send(link.STORY_END, story=1, sentences=len(told))
            await board.send(link.SYNTHESIZE, text="Not on a board's link.")
            events = []
            while (event := await board.next()).type != link.STORY_DONE:
                events.append(event)
        finally:
            await board.close()
    errors = {e.data["index"]: e.data["code"] for e in events if e.type == link.ERROR}
    assert errors == {1: "too-long", 2: "bad-text", 3: "blocked"}
    assert [e.data["index"] for e in events if e.type == link.STORY_SPOKEN] == [0, 4]
    assert event.data == {"story": 1, "spoken": 2, "cancelled": False}


@pytest.mark.asyncio
async def test_a_full_queue_refuses_sentences_with_an_error(tmp_path):
    settings = VoiceHostSettings(host="127.0.0.1", queue_sentences=2, wav_dir=str(tmp_path),
                                 link=FAST)
    async with voice_host(tmp_path) as (host, port):
        host.settings = settings
        board = ScriptedBoard(port)
        try:
            await board.send(link.STORY_START, story=1, opening="x", source="test")
            for index in range(6):
                await board.send(link.STORY_SENTENCE, story=1, index=index, text="The end.")
            error = await board.next(link.ERROR)
        finally:
            await board.close()
    assert error.data["code"] == "queue-full" and error.data["index"] >= 2


@pytest.mark.asyncio
async def test_a_board_goes_before_other_clients():
    turns, order = voicehost.Turns(), []
    gate = asyncio.Event()

    async def job(name, priority):
        async with turns.turn(priority):
            order.append(name)
            await gate.wait()

    first = asyncio.create_task(job("first", voicehost.OTHER))
    await asyncio.sleep(0)
    others = [asyncio.create_task(job(f"other{i}", voicehost.OTHER)) for i in range(3)]
    await asyncio.sleep(0)
    others[1].cancel()  # a client that went away gives up its place
    board = asyncio.create_task(job("board", voicehost.BOARD))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, board, *others, return_exceptions=True)
    assert order == ["first", "board", "other0", "other2"]


@pytest.mark.asyncio
async def test_listen_without_a_recognizer_hears_nothing_at_once(tmp_path):
    async with voice_host(tmp_path) as (_, port):
        board = ScriptedBoard(port)
        try:
            await board.send(link.LISTEN, listen=5, seconds=8)
            transcript = await board.next(timeout=2)
        finally:
            await board.close()
    assert transcript.type == "transcript" and transcript.data == {"text": "", "listen": 5}


@pytest.mark.asyncio
async def test_one_host_serves_eight_boards_in_order(tmp_path):
    stories = {b: [f"Board {b} says {word}." for word in ("one", "two", "three", "four")]
               for b in range(8)}
    settings = dataclasses.replace(FAST, max_connections_per_peer=8)  # all on 127.0.0.1
    async with voice_host(tmp_path, settings=settings) as (_, port):
        boards = [ScriptedBoard(port) for _ in stories]
        try:
            results = await asyncio.gather(*(board.tell(10 + b, stories[b])
                                              for b, board in zip(stories, boards)))
        finally:
            await asyncio.gather(*(board.close() for board in boards))
    for spoken, done in results:
        assert [s["index"] for s in spoken] == [0, 1, 2, 3]
        assert done["spoken"] == 4 and not done["cancelled"]
    assert len(list(tmp_path.glob("*.wav"))) == 8


@pytest.mark.asyncio
async def test_a_broken_speaker_ends_the_story_not_the_session(tmp_path, caplog):
    class Unplugged(WavSink):
        def write(self, pcm):
            raise OSError("speaker unplugged")

    sinks = iter([Unplugged(tmp_path / "a.wav"), WavSink(tmp_path / "b.wav")])
    async with voice_host(tmp_path, sink_factory=lambda session, story: next(sinks)) \
            as (_, port):
        board = ScriptedBoard(port)
        try:
            broken = await board.tell(1, ["Hello."])
            working = await board.tell(2, ["Hello."])
        finally:
            await board.close()
    assert broken == ([], {"story": 1, "spoken": 0, "cancelled": True})
    assert working[1] == {"story": 2, "spoken": 1, "cancelled": False}
    assert "Could not speak story 1" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["b.wav"]


@pytest.mark.asyncio
async def test_a_boards_sentence_goes_to_piper_before_other_clients_text(tmp_path):
    said = []
    async with voice_host(tmp_path) as (host, port):
        real = host.synth
        host.synth = types.SimpleNamespace(  # the real voice, noting what it is asked
            sample_rate=real.sample_rate,
            synthesize=lambda text, voice=None: (said.append(text), real.synthesize(text))[1])
        board = ScriptedBoard(port)
        try:
            await asyncio.wait_for(board.client.up.wait(), 10)
            long = "Another client has a great deal to say about the weather today. " * 3
            others = [asyncio.create_task(host.synthesize(f"{n}. {long}")) for n in range(3)]
            await wait_until(lambda: said)  # the first of them has Piper
            spoken, done = await board.tell(1, ["The board speaks."])
            await asyncio.gather(*others)
        finally:
            await board.close()
    assert said.index("The board speaks.") == 1 and len(said) == 4
    assert done["spoken"] == 1
