"""The voice host delegating speech to stock Wyoming servers: a real wyoming-piper process
for TTS, and for ASR a second storybot voice host process (its Wyoming listener, with the
Korean Vosk model: there is no other ASR model to install here)."""

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_board import engine, running_board, told  # noqa: F401  (engine is a fixture)
from test_e2e_appliance import hangul, spoken_prompt  # noqa: F401  (a fixture)
from test_voicehost import FAST, SECRET, free_port, wav_seconds
from test_wyoming import wyoming_server
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient

from buttonlines import FakeLine
from robot.button import ButtonSettings
from robot.listen import ListenSettings, WavMic
from robot.remote import RemoteRecognizer, RemoteSettings, RemoteSynthesizer, parse_uri
from robot.speech import UnknownVoiceError, default_voice_path
from robot.voicehost import VoiceHost, VoiceHostSettings
from robot.wyoserver import WyomingServer, WyomingSettings

BIN = Path(sys.executable).parent
QUICK = RemoteSettings(retry_seconds=1.0)


def wait_for_port(port, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited"
        try:
            socket = __import__("socket").create_connection(("127.0.0.1", port), 1)
            socket.close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(argv, port, log):
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def piper_argv(port):
    return [str(BIN / "wyoming-piper"), "--uri", f"tcp://127.0.0.1:{port}", "--data-dir",
            str(default_voice_path().parent), "--voice", "en_US-joe-medium",
            "--local-files-only"]


@pytest.fixture(scope="module")
def piper(tmp_path_factory):
    """A real wyoming-piper with the joe voice: its wyoming:// URI."""
    port = free_port()
    with process(piper_argv(port), port, tmp_path_factory.mktemp("piper") / "log"):
        yield f"wyoming://127.0.0.1:{port}"


def voice_host_argv(port, wyoming_port, *flags):
    return [str(BIN / "storybot"), "voice-host", "--host", "127.0.0.1", "--port", str(port),
            "--wyoming", f"tcp://127.0.0.1:{wyoming_port}", *flags]


@pytest.fixture(scope="module")
def asr(tmp_path_factory, piper):
    """A second voice host process serving the Korean model on its Wyoming listener (its
    own speech delegated to piper, so it loads no second Piper): its wyoming:// URI."""
    folder = tmp_path_factory.mktemp("asr")
    port = free_port()
    argv = voice_host_argv(free_port(), port, "--vosk-model", "ko", "--tts", piper,
                           "--wav-dir", str(folder))
    with process(argv, port, folder / "log") as proc:
        yield f"wyoming://127.0.0.1:{port}", proc


def mapped(pid, name):
    return name in Path(f"/proc/{pid}/maps").read_text()


def test_wyoming_uris_are_checked():
    assert parse_uri("wyoming://127.0.0.1:10200") == ("127.0.0.1", 10200)
    assert parse_uri("tcp://[::1]:10300") == ("::1", 10300)
    for bad in ("127.0.0.1:10200", "http://x:1", "wyoming://x"):
        with pytest.raises(ValueError):
            parse_uri(bad)


def test_a_remote_synthesizer_speaks_through_wyoming_piper(piper):
    synth = RemoteSynthesizer(piper, QUICK)
    synth.connect()
    audio = synth.synthesize("Once upon a time, there was a cat.")
    assert synth.sample_rate == 22050 and audio.sample_rate == 22050
    assert "en_US-joe-medium" in synth.voices
    assert 1.0 < audio.seconds < 5.0 and audio.synth_seconds > 0
    assert synth.synthesize("Hi.", voice="en_US-joe-medium").pcm
    with pytest.raises(UnknownVoiceError):
        synth.synthesize("Hi.", voice="nobody")


def test_a_remote_recognizer_hears_korean_in_a_second_process(asr, spoken_prompt):  # noqa: F811
    uri, _ = asr
    recognizer = RemoteRecognizer(uri, ListenSettings(), QUICK)
    recognizer.connect()
    assert recognizer.models() == [{"name": "ko", "languages": ["ko"]}]
    assert hangul(recognizer.listen(WavMic(spoken_prompt), 10, threading.Event()))
    stop = threading.Event()
    stop.set()
    assert recognizer.listen(WavMic(spoken_prompt), 10, stop) == ""


@pytest.mark.asyncio
async def test_requests_retry_until_the_server_is_up_and_then_fail_clearly(tmp_path):
    port = free_port()
    synth = RemoteSynthesizer(f"wyoming://127.0.0.1:{port}", QUICK)
    with pytest.raises(ConnectionError, match="cannot reach"):
        await asyncio.to_thread(synth.synthesize, "Hello.")
    # A server that comes up while a request is retrying serves it.
    patient = RemoteSynthesizer(f"wyoming://127.0.0.1:{port}",
                                RemoteSettings(retry_seconds=20.0))
    request = asyncio.create_task(asyncio.to_thread(patient.synthesize, "Hello."))
    await asyncio.sleep(0.5)
    assert not request.done()
    async with wyoming_server(tmp_path, port=port):
        audio = await asyncio.wait_for(request, 30)
    assert audio.seconds > 0.3


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_board_tells_stories_through_delegated_speech(
        engine, piper, asr, spoken_prompt, tmp_path, caplog):  # noqa: F811
    """Spoken prompt -> remote ASR -> board -> story -> remote TTS -> WAV; then a stock
    Wyoming client asks the voice host for a story and gets it."""
    caplog.set_level(logging.INFO)
    synth = RemoteSynthesizer(piper, QUICK)
    recognizer = RemoteRecognizer(asr[0], ListenSettings(), QUICK)
    await asyncio.to_thread(synth.connect)
    await asyncio.to_thread(recognizer.connect)
    voice_port = free_port()
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=voice_port, wav_dir=str(tmp_path),
                                       link=FAST), synth, secret=SECRET, recognizer=recognizer,
                     mic_factory=lambda: WavMic(spoken_prompt))
    host_task = asyncio.create_task(host.run())
    await asyncio.wait_for(host.server.listening.wait(), 10)
    line = FakeLine()
    try:
        async with running_board(engine, voice_port=voice_port, line=line,
                                 button=ButtonSettings(line=0)) as (board, control):
            line.level = True  # a short press on the button
            await asyncio.sleep(0.15)
            line.level = False
            story = await told(board, timeout=90)
            wyoming_port = free_port()
            standard = WyomingServer(
                WyomingSettings(host="127.0.0.1", port=wyoming_port, story_board=control),
                lambda text, voice: host.synthesize(text, voice=voice), synth.voices)
            standard_task = asyncio.create_task(standard.run())
            await asyncio.wait_for(standard.server.listening.wait(), 10)
            try:
                async with AsyncTcpClient("127.0.0.1", wyoming_port) as c:
                    await c.write_event(Transcript(text="Tell me a story about a dragon.")
                                        .event())
                    handled = await asyncio.wait_for(c.read_event(), 120)
                second = await told(board, story_id=2, timeout=60)
            finally:
                standard_task.cancel()
                await asyncio.gather(standard_task, return_exceptions=True)
    finally:
        host_task.cancel()
        await asyncio.gather(host_task, return_exceptions=True)
    assert story.prompt and hangul(story.prompt)  # heard by the second process
    assert story.stopped is None and story.voice_done and story.sentences
    assert handled.type == "handled" and handled.data["text"] == " ".join(second.sentences)
    assert second.voice_done and "dragon" in second.shaped.opening.lower()
    for n in (1, 2):
        [wav] = tmp_path.glob(f"*-story{n}.wav")
        assert wav_seconds(wav) > 2  # spoken by wyoming-piper
    assert f"Transcript from {asr[0]}" in caplog.text


@pytest.mark.slow
def test_a_delegating_voice_host_loads_neither_onnxruntime_nor_vosk(piper, asr, tmp_path):
    wyoming_port = free_port()
    argv = voice_host_argv(free_port(), wyoming_port, "--tts", piper, "--asr", asr[0],
                           "--wav-dir", str(tmp_path))
    with process(argv, wyoming_port, tmp_path / "log") as proc:
        delegating = [mapped(proc.pid, lib) for lib in ("onnxruntime", "libvosk")]
    # The ASR process, which recognizes in process, does map Vosk.
    assert delegating == [False, False] and mapped(asr[1].pid, "libvosk")
    assert os.path.getsize(tmp_path / "log") > 0
