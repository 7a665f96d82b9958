"""The voice host's standard Wyoming listener, driven by stock clients: wyoming-bench and
the wyoming package's own AsyncTcpClient, against the real joe voice and the real Korean
Vosk model (the only one installable here)."""

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from conftest_audio import joe_synthesizer
from test_board import LONG, engine, press, running_board, told  # noqa: F401  (a fixture)
from test_e2e_appliance import PROMPT_KO, hangul
from test_voicehost import FAST, free_port
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, \
    SynthesizeVoice

from robot import link
from robot.listen import ListenSettings, Recognizer, model_dir
from robot.speech import Synthesizer
from robot.voicehost import VoiceHost, VoiceHostSettings
from robot.wordfilter import WordFilter
from robot.wyoserver import WyomingServer, WyomingSettings

BENCH = Path(sys.executable).parent / "wyoming-bench"
STORY = "Once upon a time, there was a cat. The cat liked milk. The end."


@pytest.fixture(scope="module")
def recognizer():
    return Recognizer(ListenSettings(vosk_model=str(model_dir("ko"))))


@pytest.fixture(scope="module")
def korean_speech(tmp_path_factory):
    """The Korean prompt spoken by espeak-ng: (16-bit mono PCM, rate)."""
    path = tmp_path_factory.mktemp("speech") / "ko.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), PROMPT_KO], check=True)
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


@pytest.fixture(scope="module")
def slow_voice_dir(tmp_path_factory):
    """A second installed voice: the joe model under another name, speaking at half speed."""
    joe = joe_synthesizer().voice_path
    folder = tmp_path_factory.mktemp("voices")
    config = json.loads(Path(f"{joe}.json").read_text())
    config["inference"]["length_scale"] = 2.0
    (folder / "en_US-slowjoe-medium.onnx").symlink_to(joe)
    (folder / "en_US-slowjoe-medium.onnx.json").write_text(json.dumps(config))
    return folder


@contextlib.asynccontextmanager
async def wyoming_server(tmp_path, synth=None, recognizer=None, words=None, synthesize=None,
                         mic_factory=None, **settings):
    """A voice host (its boards' port unused here) with its Wyoming listener on loopback."""
    synth = synth or joe_synthesizer()
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=free_port(), wav_dir=str(tmp_path),
                                       link=FAST), synth, recognizer=recognizer,
                     mic_factory=mic_factory)
    port = settings.pop("port", None) or free_port()
    server = WyomingServer(
        WyomingSettings(host="127.0.0.1", port=port, **settings),
        synthesize or (lambda text, voice: host.synthesize(text, voice=voice)), synth.voices,
        recognizer=recognizer, asr_models=[{"name": "ko", "languages": ["ko"]}], words=words)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.server.listening.wait(), 10)
    try:
        yield server, port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def client(port):
    async with AsyncTcpClient("127.0.0.1", port) as c:
        yield c


async def next_event(c, timeout=30):
    event = await asyncio.wait_for(c.read_event(), timeout)
    assert event is not None, "the server closed the connection"
    return event


async def read_audio(c, until="audio-stop"):
    """(audio-start data, PCM) of one answer; every other event before `until` fails."""
    start, pcm = None, b""
    while (event := await next_event(c)).type != until:
        if event.type == "audio-start":
            start = start or event.data
        elif event.type == "audio-chunk":
            pcm += event.payload
        else:
            assert event.type == "audio-stop", event
    return start, pcm


async def expect_error(c, code):
    event = await next_event(c)
    assert event.type == "error" and event.data["code"] == code, event
    return event.data["text"]


async def bench(*args, timeout=240):
    proc = await asyncio.create_subprocess_exec(
        str(BENCH), *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    out = out.decode()
    assert proc.returncode == 0, out
    return out


@pytest.mark.asyncio
async def test_describe_advertises_voices_models_and_stories(tmp_path, recognizer,
                                                             slow_voice_dir):
    synth = Synthesizer(voice_dirs=[slow_voice_dir])
    async with wyoming_server(tmp_path, synth=synth, recognizer=recognizer,
                              story_board="127.0.0.1:9") as (_, port):
        async with client(port) as c:
            await c.write_event(Describe().event())
            info = Info.from_event(await next_event(c))
        out = await bench("info", f"127.0.0.1:{port}")
    [tts] = info.tts
    assert tts.supports_synthesize_streaming
    assert {(v.name, tuple(v.languages)) for v in tts.voices} == {
        ("en_US-joe-medium", ("en_US",)), ("en_US-slowjoe-medium", ("en_US",))}
    assert [(m.name, m.languages) for m in info.asr[0].models] == [("ko", ["ko"])]
    assert info.handle[0].models[0].languages == ["en"]
    assert "storybot-piper (synthesize streaming)" in out and "model ko [ko]" in out


@pytest.mark.asyncio
async def test_without_a_recognizer_or_board_only_speech_is_advertised(tmp_path):
    async with wyoming_server(tmp_path) as (_, port), client(port) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await next_event(c))
        await c.write_event(Transcribe().event())
        await expect_error(c, "no-asr")
        await c.write_event(Transcript(text="Tell me a story.").event())
        assert (await next_event(c)).type == "not-handled"
    assert info.tts and not info.asr and not info.handle


@pytest.mark.slow
@pytest.mark.asyncio
async def test_wyoming_bench_tts_plain_and_streaming_all_ok(tmp_path):
    async with wyoming_server(tmp_path) as (_, port):
        out = await bench("tts", f"127.0.0.1:{port}", "--mode", "both", "--rounds", "2",
                          "--warmup", "1", "--texts", STORY, "Hello there.")
    # Each mode: 2 texts x 2 rounds, all ok.
    assert re.findall(r"\[(non_streaming|streaming)\] ok=(\d+) fail=(\d+)", out) == [
        ("non_streaming", "4", "0"), ("streaming", "4", "0")], out


class Gate:
    """A synthesize that holds every sentence after the first until the client has
    received audio: a server that waited for the whole text would never answer."""

    def __init__(self):
        self.first_audio = asyncio.Event()
        self.calls = 0

    async def __call__(self, text, voice):
        self.calls += 1
        if self.calls > 1:
            await asyncio.wait_for(self.first_audio.wait(), 20)
        return await asyncio.to_thread(joe_synthesizer().synthesize, text)


@pytest.mark.asyncio
async def test_plain_synthesize_sends_the_first_sentence_before_the_rest(tmp_path):
    gate = Gate()
    async with wyoming_server(tmp_path, synthesize=gate) as (_, port), client(port) as c:
        await c.write_event(Synthesize(text=STORY).event())
        assert (await next_event(c)).type == "audio-start"
        assert (await next_event(c)).type == "audio-chunk"
        gate.first_audio.set()
        _, pcm = await read_audio(c)
    assert gate.calls == 3 and len(pcm) > 0


@pytest.mark.asyncio
async def test_streamed_text_is_spoken_sentence_by_sentence(tmp_path):
    gate = Gate()
    async with wyoming_server(tmp_path, synthesize=gate) as (_, port), client(port) as c:
        await c.write_event(SynthesizeStart().event())
        for piece in ("Once upon a time, ", "there was a cat. The ", "cat liked milk."):
            await c.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence is known to be over: its audio comes before synthesize-stop.
        first = await read_audio(c)
        gate.first_audio.set()
        # A `synthesize` inside a stream only repeats it for old servers: ignored.
        await c.write_event(Synthesize(text="Ignored.").event())
        await c.write_event(SynthesizeStop().event())
        second = await read_audio(c)
        assert (await next_event(c)).type == "synthesize-stopped"
    assert first[0]["rate"] == 22050 and first[1] and second[1]
    assert gate.calls == 2


@pytest.mark.asyncio
async def test_the_voice_field_picks_among_installed_voices(tmp_path, slow_voice_dir):
    synth = Synthesizer(voice_dirs=[slow_voice_dir])
    async with wyoming_server(tmp_path, synth=synth) as (_, port), client(port) as c:
        lengths = {}
        for name in ("en_US-joe-medium", "en_US-slowjoe-medium"):
            await c.write_event(Synthesize(text="Hello there, little cat.",
                                           voice=SynthesizeVoice(name=name)).event())
            lengths[name] = len((await read_audio(c))[1])
        await c.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(name="nobody")).event())
        assert "nobody" in await expect_error(c, "unknown-voice")
        await c.write_event(SynthesizeStart(voice=SynthesizeVoice(language="ko_KR")).event())
        await expect_error(c, "unknown-voice")
        await c.write_event(Synthesize(text="Hi.", voice=SynthesizeVoice(language="en_US")).event())
        assert (await read_audio(c))[1]
    assert 1.6 < lengths["en_US-slowjoe-medium"] / lengths["en_US-joe-medium"] < 2.4


@pytest.mark.asyncio
async def test_blocked_sentences_are_not_spoken(tmp_path):
    words = WordFilter(["milk"])
    async with wyoming_server(tmp_path, words=words) as (_, port), client(port) as c:
        await c.write_event(Synthesize(text="The cat liked milk.").event())
        start, pcm = await read_audio(c)
        await c.write_event(Synthesize(text="The cat liked fish. The cat liked milk.").event())
        _, partly = await read_audio(c)
    assert start is not None and pcm == b""
    alone = joe_synthesizer().synthesize("The cat liked fish.").pcm
    # Piper draws its durations with noise (a few % either way); both sentences spoken
    # would be about twice as long as the first alone.
    assert 0.75 * len(alone) < len(partly) < 1.35 * len(alone)


@pytest.mark.asyncio
async def test_refused_requests_get_an_error_and_the_connection_goes_on(tmp_path, recognizer):
    async with wyoming_server(tmp_path, recognizer=recognizer, max_text_chars=100,
                              max_audio_seconds=1.0) as (_, port), client(port) as c:
        for length in (101, 100_000):
            await c.write_event(Synthesize(text="a" * length).event())
            await expect_error(c, "too-long")
        # A lone surrogate, which only JSON's escapes can carry (the client cannot encode it).
        c._writer.write(json.dumps({"type": "synthesize", "data": {"text": "\ud800 x"}}).encode()
                        + b"\n")
        await expect_error(c, "bad-request")
        await c.write_event(Event("synthesize", {"text": 5}))
        await expect_error(c, "bad-request")
        await c.write_event(SynthesizeChunk(text="No start.").event())
        await expect_error(c, "bad-request")
        await c.write_event(SynthesizeStart().event())
        await c.write_event(SynthesizeChunk(text="a" * 60).event())
        await c.write_event(SynthesizeChunk(text="a" * 60).event())
        await expect_error(c, "too-long")
        for fmt in ({"rate": 16000, "width": 1, "channels": 1},
                    {"rate": 16000, "width": 2, "channels": 2},
                    {"rate": 100, "width": 2, "channels": 1}):
            await c.write_event(Transcribe().event())
            await c.write_event(AudioStart(**fmt).event())
            await expect_error(c, "bad-audio-format")
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=8000, width=2, channels=1, audio=b"\0" * 64).event())
        await expect_error(c, "bad-audio-format")
        await c.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for _ in range(3):
            await c.write_event(AudioChunk(rate=16000, width=2, channels=1,
                                           audio=b"\0" * 16000).event())
        await expect_error(c, "too-long")
        await c.write_event(AudioStop().event())  # of the refused audio: nothing to answer
        # The connection still serves.
        await c.write_event(Synthesize(text="Hello.").event())
        assert (await read_audio(c))[1]


@pytest.mark.asyncio
async def test_oversized_and_malformed_frames_are_skipped(tmp_path):
    async with wyoming_server(tmp_path) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        liar_reader, liar = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"garbage\n" + json.dumps(
                {"type": "audio-chunk", "payload_length": 1_000_000}).encode() + b"\n"
                + b"\0" * 1_000_000)
            await link.write_event(writer, link.Event("describe"))
            event = await asyncio.wait_for(link.read_event(reader, link.LinkSettings()), 10)
            # A frame claiming 2 GB is read (and dropped) in small pieces, never allocated.
            liar.write(json.dumps({"type": "audio-chunk", "payload_length": 2**31}).encode()
                       + b"\n" + b"\0" * 100_000)
            await liar.drain()
            async with client(port) as c:
                await c.write_event(Describe().event())
                assert (await next_event(c)).type == "info"
        finally:
            writer.close()
            liar.close()
    assert event.type == "info"


@pytest.mark.asyncio
async def test_no_pings_and_idle_clients_are_closed(tmp_path):
    async with wyoming_server(tmp_path, idle_seconds=3.0) as (_, port), client(port) as c:
        await c.write_event(Describe().event())
        assert (await next_event(c)).type == "info"
        # Nothing unrequested, whatever the board link's ping interval (2 s)...
        assert await asyncio.wait_for(c.read_event(), 10) is None  # ...then closed when idle


@pytest.mark.asyncio
async def test_clients_beyond_the_cap_are_refused(tmp_path):
    async with wyoming_server(tmp_path, max_connections=2) as (server, port):
        async with client(port) as a, client(port) as b:
            for c in (a, b):
                await c.write_event(Describe().event())
                assert (await next_event(c)).type == "info"
            async with client(port) as extra:
                assert "too many" in await expect_error(extra, "busy")
                assert await asyncio.wait_for(extra.read_event(), 5) is None
        async with client(port) as again:
            await again.write_event(Describe().event())
            assert (await next_event(again)).type == "info"


@pytest.mark.asyncio
async def test_only_allowed_clients_are_served(tmp_path):
    async with wyoming_server(tmp_path, allow=("10.0.0.0/8", "192.168.1.5")) as (server, port), \
            client(port) as c:
        await c.write_event(Describe().event())
        assert "not allowed" in await expect_error(c, "not-allowed")
        assert await asyncio.wait_for(c.read_event(), 5) is None
        # On a listener bound to "::", IPv4 clients come as IPv4-mapped addresses.
        assert server.allowed(("::ffff:192.168.1.5", 1, 0, 0))
        assert not server.allowed(("::ffff:192.168.1.6", 1, 0, 0))
    async with wyoming_server(tmp_path, allow=("127.0.0.0/8",)) as (_, port), client(port) as c:
        await c.write_event(Describe().event())
        assert (await next_event(c)).type == "info"


@pytest.mark.asyncio
async def test_korean_speech_is_transcribed_from_the_clients_audio(tmp_path, recognizer,
                                                                   korean_speech):
    pcm, rate = korean_speech
    async with wyoming_server(tmp_path, recognizer=recognizer) as (_, port), client(port) as c:
        await c.write_event(Transcribe(language="ko").event())
        await c.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for i in range(0, len(pcm), 4096):
            await c.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                           audio=pcm[i:i + 4096]).event())
        await c.write_event(AudioStop().event())
        transcript = await next_event(c)
    assert transcript.type == "transcript" and hangul(transcript.data["text"])


@pytest.mark.slow
@pytest.mark.asyncio
async def test_wyoming_bench_stt_round_trip(tmp_path, recognizer, korean_speech):
    pcm, rate = korean_speech
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with wave.open(str(corpus / "ko_01.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    (corpus / "ko_01.txt").write_text(PROMPT_KO)
    async with wyoming_server(tmp_path, recognizer=recognizer) as (_, port):
        out = await bench("stt", f"127.0.0.1:{port}", "--corpus", str(corpus), "--mode",
                          "non_streaming", "--rounds", "1", "--warmup", "0")
    assert re.search(r"ok=1 fail=0", out), out


@pytest.mark.asyncio
async def test_transcription_never_opens_the_microphone(tmp_path, recognizer, korean_speech):
    opened = []
    pcm, rate = korean_speech
    async with wyoming_server(tmp_path, recognizer=recognizer,
                              mic_factory=lambda: opened.append(1)) as (_, port), \
            client(port) as c:
        await c.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm).event())
        await c.write_event(AudioStop().event())
        assert (await next_event(c)).type == "transcript"
    assert opened == []


async def ask_for_story(port, text="Tell me a story about a dragon."):
    async with client(port) as c:
        await c.write_event(Transcript(text=text).event())
        return await next_event(c, timeout=120)


@pytest.mark.asyncio
async def test_a_stock_client_asks_for_a_story_and_gets_it(engine, tmp_path):  # noqa: F811
    async with running_board(engine) as (board, control):
        async with wyoming_server(tmp_path, story_board=control) as (_, port):
            handled = await ask_for_story(port)
            story = await told(board)
            # While the board tells another story, the asker hears why there is none.
            await press(board, LONG)
            busy = await ask_for_story(port)
            await told(board, story_id=2)
    assert handled.type == "handled" and handled.data["text"] == " ".join(story.sentences)
    assert story.sentences and "dragon" in story.shaped.opening.lower()
    assert busy.type == "not-handled" and "busy telling story 2" in busy.data["text"]


@pytest.mark.asyncio
async def test_no_story_when_the_board_is_unreachable(tmp_path):
    async with wyoming_server(tmp_path, story_board=f"127.0.0.1:{free_port()}") as (_, port):
        event = await ask_for_story(port)
    assert event.type == "not-handled" and "not reachable" in event.data["text"]
