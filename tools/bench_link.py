#!/usr/bin/env python3
"""Benchmark the board-to-voice-host link: N paired boards telling stories to one voice host.

Runs a real voice host and N scripted boards in one process on loopback, each board
keeping at most --window sentences in flight as `storybot serve` does, and reports
sentence throughput and the latency from sending a sentence to its story-spoken
acknowledgement. --synth silence replaces Piper with a stand-in that returns a fixed
stretch of silence at once, so the numbers are the link's and the host's scheduling;
--synth piper includes real synthesis. Audio goes to a sink that drops it. Every link
is paired and sealed (robot.seal), as in the product.

--board-ram measures instead what the link's security costs the board, as `storybot
bundle` measures RAM: the resident set of the riscv64 python3 (the userland of
tools/riscv/userland.sh) under qemu-user, read at marks: the daemon's modules without
robot.seal, then with it and a session that sealed and opened 1,000 sentences, then
with hashlib + hmac (OpenSSL) and ssl for comparison.

    python tools/bench_link.py --boards 8 --sentences 50
    python tools/bench_link.py --boards 8 --sentences 5 --synth piper
    python tools/bench_link.py --board-ram
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from robot import link  # noqa: E402
from robot.link import Event  # noqa: E402
from robot.speech import Audio  # noqa: E402
from robot.voicehost import VoiceHost, VoiceHostSettings  # noqa: E402

SECRET = bytes(range(32))


class SilentVoice:
    """A stand-in for Piper: silence of a fixed length, made at once."""

    sample_rate = 22050

    def __init__(self, seconds: float) -> None:
        self._pcm = b"\0" * (2 * int(self.sample_rate * seconds))

    def synthesize(self, text: str, voice: str | None = None) -> Audio:
        return Audio(text, self._pcm, self.sample_rate, 0.0)


class NullSink:
    name = "null"

    def open(self, sample_rate: int) -> None:
        pass

    def write(self, pcm: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def board(port: int, story: int, sentences: int, window: int,
                latencies: list[float]) -> bool:
    """Tell one story; True if every sentence was spoken, in order."""
    inbox: asyncio.Queue[Event] = asyncio.Queue()

    async def handle(event: Event) -> bool:
        await inbox.put(event)
        return True

    client = link.LinkClient("127.0.0.1", port, handle, link.LinkSettings(), secret=SECRET)
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.up.wait(), 10)
        await client.send(Event(link.STORY_START, {"story": story, "opening": "x"}))
        sent_at: dict[int, float] = {}
        expected, in_order = 0, True

        async def take_ack() -> None:
            nonlocal expected, in_order
            event = await inbox.get()
            if event.type == link.STORY_SPOKEN:
                index = event.data["index"]
                latencies.append(time.perf_counter() - sent_at.pop(index))
                in_order &= index == expected
                expected += 1

        for index in range(sentences):
            while len(sent_at) >= window:
                await take_ack()
            sent_at[index] = time.perf_counter()
            await client.send(Event(link.STORY_SENTENCE, {
                "story": story, "index": index,
                "text": f"Board {story} tells sentence number {index} of its story."}))
        await client.send(Event(link.STORY_END, {"story": story, "sentences": sentences}))
        while sent_at:
            await take_ack()
        return in_order and expected == sentences
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def main(args: argparse.Namespace) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if args.synth == "piper":
        from robot.speech import Synthesizer

        voice = Synthesizer()
    else:
        voice = SilentVoice(args.audio_seconds)
    # Every board comes from 127.0.0.1 here: let them all in.
    settings = link.LinkSettings(max_connections_per_peer=args.boards,
                                 max_connections=max(32, args.boards))
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=port, link=settings), voice,
                     secret=SECRET, sink_factory=lambda session, story: NullSink())
    server = asyncio.create_task(host.run())
    await host.server.listening.wait()
    latencies: list[float] = []
    started = time.perf_counter()
    results = await asyncio.gather(*(board(port, b + 1, args.sentences, args.window, latencies)
                                     for b in range(args.boards)))
    elapsed = time.perf_counter() - started
    server.cancel()
    await asyncio.gather(server, return_exceptions=True)

    total = args.boards * args.sentences
    cuts = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19
    print(f"boards {args.boards}, sentences {total}, window {args.window}, synth {args.synth}")
    print(f"all delivered in order: {all(results)}")
    print(f"elapsed {elapsed:.2f} s, throughput {total / elapsed:.1f} sentences/s")
    print(f"latency send -> spoken: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"p95 {cuts[18] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")


# Runs in the riscv64 python3; reports each mark and waits for the measurer to read RSS.
_PROBE = r"""
import sys, types

def mark(name):
    print(name, flush=True)
    sys.stdin.readline()

# The daemon's modules, with robot.seal left out (nothing uses it while importing).
sys.modules["robot.seal"] = types.ModuleType("robot.seal")
import robot.board, robot.cli
mark("daemon modules without robot.seal")
del sys.modules["robot.seal"]
from robot import seal
board = seal.Session(bytes(32), b"b" * 16, b"h" * 16, is_board=True)
host = seal.Session(bytes(32), b"b" * 16, b"h" * 16, is_board=False)
sentence = seal.encode_frame("story-sentence", {"story": 1, "index": 0,
                             "text": "Once upon a time, there was a little fox. " * 5}, None)
for _ in range(1000):
    assert host.open(board.seal(sentence)) == sentence
mark("+ robot.seal, a session, 1000 sentences sealed and opened")
import hashlib, hmac
mark("+ hashlib and hmac (OpenSSL's libcrypto)")
import importlib
del sys.modules["ssl"]  # robot.board keeps it out; put it back
importlib.import_module("ssl")
mark("+ ssl (libssl)")
"""


def board_ram() -> None:
    from robot.dev import bundle

    root = bundle.default_userland()
    if root is None:
        sys.exit("no riscv64 userland: bash tools/riscv/userland.sh")
    env_sh = REPO / "tools" / "riscv" / "env.sh"
    cc = subprocess.run(["bash", "-c", f'. "{env_sh}" && echo "$RV_CC_GCC"'],
                        capture_output=True, text=True, check=True).stdout.strip()
    build = "build/ramprobe"
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), f"BUILD={build}", f"CC={cc}",
                    f"{build}/libstorybot.so"], check=True)
    with tempfile.TemporaryDirectory() as cache:
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONPATH": str(REPO),
               "PYTHONSAFEPATH": "1", "STORYBOT_ABI": "1", "PYTHONPYCACHEPREFIX": cache,
               "STORYBOT_LIB": str(REPO / "native" / build / "libstorybot.so")}
        python = [*bundle.qemu_user(root), str(root / "usr" / "bin" / "python3")]
        # Bytecode first, as on the board (install.sh compiles it).
        subprocess.run([*python, "-c", "import robot.board, robot.cli, robot.seal"],
                       env=env, check=True)
        proc = subprocess.Popen([*python, "-c", _PROBE], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        previous = None
        print("guest RSS of riscv64 python3 under qemu-user (as storybot bundle measures)")
        for line in proc.stdout:
            rss = bundle.guest_rss(proc.pid)[0] / 2**20
            added = f"  (+{rss - previous:.2f} MiB)" if previous is not None else ""
            print(f"{rss:7.2f} MiB  {line.strip()}{added}")
            previous = rss
            proc.stdin.write("\n")
            proc.stdin.flush()
        if proc.wait():
            sys.exit(f"the probe failed ({proc.returncode})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=8, help="boards (default: %(default)s)")
    parser.add_argument("--sentences", type=int, default=50,
                        help="sentences per board (default: %(default)s)")
    parser.add_argument("--window", type=int, default=4,
                        help="sentences in flight per board (default: %(default)s)")
    parser.add_argument("--synth", choices=["silence", "piper"], default="silence",
                        help="voice (default: %(default)s)")
    parser.add_argument("--audio-seconds", type=float, default=1.0,
                        help="length of each silent sentence (default: %(default)s)")
    parser.add_argument("--board-ram", action="store_true",
                        help="measure the board's RAM cost of the link's security instead")
    parsed = parser.parse_args()
    if parsed.board_ram:
        board_ram()
    else:
        asyncio.run(main(parsed))
