"""Tests of `storybot tell` as a user runs it: a subprocess, the real model and voice."""

import json
import math
import os
import pty
import signal
import subprocess
import sys
import wave
from array import array

import pytest
from conftest import REPO

from robot.dev import tellbench
from robot.dev.tellbench import PacedSink
from robot.tellcmd import request_opening
from robot.wordfilter import WordFilter


def storybot(*args, cwd):
    """Popen of `storybot tell ...` with its output in pipes."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "robot.cli", "tell", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run(*args, cwd):
    proc = storybot(*args, cwd=cwd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out, err


def rms(pcm: bytes) -> float:
    samples = array("h", pcm)
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def test_tell_writes_the_spoken_story_to_a_wav(tmp_path):
    out, err = run("Once upon a time", "-s", "123", "-n", "60", "--print",
                   "--output", "story.wav", "--json", "t.json", cwd=tmp_path)
    report = json.loads((tmp_path / "t.json").read_text())
    sentences = [s["text"] for s in report["sentences"]]
    assert sentences[0] == "Once upon a time, there was a little girl named Lily."
    assert len(sentences) == 4 and report["story"]["finish_reason"] == "length"
    assert out.splitlines() == sentences

    with wave.open(str(tmp_path / "story.wav"), "rb") as wav:
        rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    seconds = len(pcm) / 2 / rate
    assert seconds == pytest.approx(sum(s["audio_seconds"] for s in report["sentences"]), abs=1e-3)
    assert seconds == pytest.approx(report["audio_seconds"], abs=1e-3) and seconds > 8
    assert rms(pcm) > 1000
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("4 sentences, 4 played;") and "ended by length" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.wav", "t.json"]


def test_voice_request_is_shaped_into_the_opening(tmp_path):
    _, err = run("--voice-request", "tell me a story about a happy little turtle",
                 "-s", "5", "-n", "30", "--output", "story.wav", cwd=tmp_path)
    assert "opening: Once upon a time, there was a happy little turtle.\n" in err


@pytest.mark.parametrize("request_, opening", [
    ("Once upon a time", "Once upon a time"),
    ("tell me a story about a dragon named max", "Once upon a time, there was a dragon named Max."),
])
def test_request_opening_shapes_requests_and_passes_openings_through(request_, opening):
    assert request_opening(request_, WordFilter.default(), seed=1) == opening


def test_ctrl_c_leaves_no_partial_wav(tmp_path):
    proc = storybot("Once upon a time", "-s", "13", "-n", "0", "--contexts", "3",
                    "--output", "story.wav", cwd=tmp_path)
    lines = []
    for line in proc.stderr:  # sentences are being spoken (written) by now
        lines.append(line)
        if "Synthesis 2:" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, "".join(lines) + err
    assert "(cancelled)" in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quiet", [False, True])
def test_at_a_terminal_each_sentence_is_shown_as_it_is_spoken(tmp_path, quiet):
    terminal, tty = pty.openpty()
    args = ["Once upon a time", "-s", "123", "-n", "30", "--output", "story.wav",
            "--json", "t.json", *(["--quiet"] if quiet else [])]
    proc = subprocess.Popen([sys.executable, "-m", "robot.cli", "tell", *args], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=tty,
                            stderr=subprocess.PIPE, text=True)
    os.close(tty)
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the terminal's other end is closed, the process is done
                break
            if not chunk:
                break
            shown += chunk
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(terminal)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    sentences = [s["text"] for s in json.loads((tmp_path / "t.json").read_text())["sentences"]]
    assert sentences
    assert shown.decode().splitlines() == ([] if quiet else sentences)


class Clock:
    """time for PacedSink: a clock that only sleep (and the test) moves."""

    def __init__(self):
        self.now, self.slept = 100.0, []

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_paced_sink_takes_as_long_as_the_audio(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tellbench, "time", clock)
    sink = PacedSink()
    sink.open(1000)
    for _ in range(5):
        sink.write(bytes(2 * 40))  # 40 ms each
    assert clock.slept == [pytest.approx(0.04)] * 5
    assert clock.now - 100.0 == pytest.approx(0.2)


def test_a_late_write_starts_the_paced_clock_again(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(tellbench, "time", clock)
    sink = PacedSink()
    sink.open(1000)
    sink.write(bytes(2 * 40))
    clock.now += 1.0  # the speaker ran dry for a second
    sink.write(bytes(2 * 40))
    assert clock.slept == [pytest.approx(0.04), pytest.approx(0.04)]
