#!/usr/bin/env python3
"""The voice host as a Wyoming server, measured beside stock wyoming-piper in one run.

    .venv/bin/python tools/bench_wyoming.py tts   # wyoming-bench: first audio and RTF
    .venv/bin/python tools/bench_wyoming.py rss   # the voice host's memory, delegating or not

tts starts `storybot voice-host --wyoming` and wyoming-piper (the same joe voice) and runs
wyoming-bench against both: one sentence, and a 10-sentence story, each plain
(`synthesize`) and streamed sentence by sentence (synthesize-start/chunk/stop).

rss starts the voice host twice, with Piper and the Korean Vosk model in process and
then delegating both (--tts to wyoming-piper, --asr to a second voice host serving the
Korean model), has each synthesize and transcribe once through its Wyoming listener,
and reports its resident memory (VmRSS) and peak (VmHWM) from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SENTENCE = "Once upon a time, there was a little cat named Tom who loved to play outside."
STORY = (
    "Once upon a time, there was a little cat named Tom. Tom loved to play in the garden. "
    "One day, he saw a big red ball under a tree. He ran to the ball and pushed it with his "
    "nose. The ball rolled down the hill, and Tom ran after it. At the bottom of the hill, "
    "he met a small dog named Max. Max wanted to play with the ball too. Tom and Max took "
    "turns pushing the ball all afternoon. When the sun went down, they were very tired. "
    "They went home happy, and they were friends forever."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


@contextlib.contextmanager
def started(argv: list[str], port: int, log: Path):
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


def piper(port: int, log: Path):
    from robot.speech import default_voice_path

    return started([str(BIN / "wyoming-piper"), "--uri", f"tcp://127.0.0.1:{port}",
                    "--data-dir", str(default_voice_path().parent), "--voice",
                    "en_US-joe-medium", "--local-files-only"], port, log)


def voice_host(wyoming_port: int, log: Path, *flags: str):
    return started([str(BIN / "storybot"), "voice-host", "--host", "127.0.0.1", "--port",
                    str(free_port()), "--wyoming", f"tcp://127.0.0.1:{wyoming_port}",
                    "--wav-dir", str(log.parent), *flags], wyoming_port, log)


def tts(work: Path) -> None:
    ours, theirs = free_port(), free_port()
    with voice_host(ours, work / "voicehost.log"), piper(theirs, work / "piper.log"):
        for label, text in (("one sentence", SENTENCE), ("10-sentence story", STORY)):
            print(f"\n##### {label}: {len(text)} characters", flush=True)
            out = subprocess.run(
                [str(BIN / "wyoming-bench"), "tts", f"127.0.0.1:{ours}", f"127.0.0.1:{theirs}",
                 "--mode", "both", "--rounds", "3", "--warmup", "1", "--no-unique",
                 "--texts", text], capture_output=True, text=True, check=True).stdout
            print(out[out.index("Summary"):] if "Summary" in out else out, flush=True)


def status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


async def exercise(port: int, speech: Path) -> None:
    """One synthesis and one transcription through the Wyoming listener."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize

    with wave.open(str(speech)) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Synthesize(text=SENTENCE).event())
        while (await c.read_event()).type != "audio-stop":
            pass
        await c.write_event(Transcribe().event())
        await c.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await c.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm).event())
        await c.write_event(AudioStop().event())
        while (await c.read_event()).type != "transcript":
            pass


def rss(work: Path) -> None:
    speech = work / "ko.wav"
    prompt = "공룡 이야기를 해 주세요"  # "please tell a dinosaur story", as the tests say it
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(speech), prompt], check=True)
    rows = []
    port = free_port()
    with voice_host(port, work / "local.log", "--vosk-model", "ko") as proc:
        asyncio.run(exercise(port, speech))
        rows.append(("Piper + Vosk ko in process", status(proc.pid)))
    tts_port, asr_port, port = free_port(), free_port(), free_port()
    with piper(tts_port, work / "piper.log"), \
            voice_host(asr_port, work / "asr.log", "--vosk-model", "ko", "--tts",
                       f"wyoming://127.0.0.1:{tts_port}"), \
            voice_host(port, work / "delegating.log", "--tts", f"wyoming://127.0.0.1:{tts_port}",
                       "--asr", f"wyoming://127.0.0.1:{asr_port}") as proc:
        asyncio.run(exercise(port, speech))
        rows.append(("--tts and --asr delegated", status(proc.pid)))
    print(f"{'voice host':32} {'VmRSS MiB':>10} {'VmHWM MiB':>10}")
    for label, fields in rows:
        print(f"{label:32} {fields['VmRSS']:>10} {fields['VmHWM']:>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["tts", "rss"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-wyoming-") as work:
        (tts if args.what == "tts" else rss)(Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
