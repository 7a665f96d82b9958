"""Attacks on the voice host, from a network namespace of their own, and its robustness.

The namespace test puts a real voice host (storybot voice-host: Piper, Vosk hearing a
WAV file as its microphone) in one network namespace and tests/attack_peer.py in a
second, joined by a veth pair: a paired board there is heard and tells a story while,
from another address, every attack is tried and 50 hostile connections flood the host.
The robustness tests run a voice host in this process, on loopback, and check that its
connections, open files and memory come back to where they were.
"""

import asyncio
import dataclasses
import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import tracemalloc
import types
from pathlib import Path

import pytest
from test_install import need
from test_voicehost import FAST, SECRET, ScriptedBoard, play_threads, voice_host, wait_until, \
    wav_seconds

from robot import link, seal

HERE = Path(__file__).resolve().parent
LEAKS = {"transcript", "audio-start", "audio-chunk", "audio-stop", "story-spoken", "story-done"}


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def namespaces():
    """(host namespace, peer namespace, "10.213.N"): .1 in the first, .2 and .3 in the
    second, on a veth pair of their own."""
    need(os.geteuid() == 0 and shutil.which("ip") is not None,
         "root and iproute2's ip (for network namespaces)")
    tag = f"{os.getpid() % 100000}"
    host_ns, peer_ns, net = f"sbhost{tag}", f"sbpeer{tag}", f"10.213.{os.getpid() % 250}"
    try:
        ip("netns", "add", host_ns)
    except subprocess.CalledProcessError as err:
        need(False, f"a network namespace ({err.stderr.strip()})")
    try:
        ip("netns", "add", peer_ns)
        ip("link", "add", f"sbh{tag}", "type", "veth", "peer", "name", f"sbp{tag}")
        ip("link", "set", f"sbh{tag}", "netns", host_ns)
        ip("link", "set", f"sbp{tag}", "netns", peer_ns)
        ip("-n", host_ns, "addr", "add", f"{net}.1/24", "dev", f"sbh{tag}")
        ip("-n", peer_ns, "addr", "add", f"{net}.2/24", "dev", f"sbp{tag}")
        ip("-n", peer_ns, "addr", "add", f"{net}.3/24", "dev", f"sbp{tag}")
        for ns, dev in ((host_ns, f"sbh{tag}"), (peer_ns, f"sbp{tag}")):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield host_ns, peer_ns, net
    finally:
        for ns in (host_ns, peer_ns):  # the veth pair goes with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def spoken_prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("mic") / "prompt-ko.wav"
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(path), "공룡 이야기를 해 주세요"],
                   check=True)
    return path


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")[-3000:]
        if time.monotonic() > deadline:  # a bound on the wait, not a speed to meet
            raise TimeoutError(f"no {text!r}: " + path.read_text()[-3000:])
        time.sleep(0.1)


@pytest.mark.slow
def test_nothing_but_a_paired_board_is_heard_or_spoken_while_attacked(
        namespaces, spoken_prompt, tmp_path):
    host_ns, peer_ns, net = namespaces
    secret = seal.new_secret()
    seal.save(tmp_path / "pairing.key", secret)
    wavs, log = tmp_path / "wavs", tmp_path / "voice-host.log"
    wavs.mkdir()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    with open(log, "w") as out:
        host = subprocess.Popen(
            ["ip", "netns", "exec", host_ns, sys.executable, "-m", "robot.cli", "voice-host",
             "--host", f"{net}.1", "--port", "10720", "--wav-dir", str(wavs),
             "--pairing", str(tmp_path / "pairing.key"), "--vosk-model", "ko",
             "--mic-wav", str(spoken_prompt)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_line(log, "Listening on", host, 120)
        peer = subprocess.run(
            ["ip", "netns", "exec", peer_ns, sys.executable, str(HERE / "attack_peer.py"),
             f"{net}.1", "10720", f"{net}.2", f"{net}.3", seal.to_code(secret)],
            capture_output=True, text=True, env=env, timeout=600)
    finally:
        host.terminate()
        host.wait(30)
    text = log.read_text()
    assert peer.returncode == 0, peer.stderr[-3000:] + text[-3000:]
    report = json.loads(peer.stdout)

    # The paired board was heard, and its story spoken in full, through the flood.
    assert report["board"]["transcript"], "the microphone works for the paired board"
    assert report["board"]["done"] == {"story": 1, "spoken": 6, "cancelled": False}
    assert report["flood"]["connections"] >= 50
    assert not LEAKS & set(report["flood"])
    [wav] = wavs.iterdir()  # no other WAV was written, not even a part of one
    assert wav.name.endswith("-story1.wav") and wav_seconds(wav) > 5
    assert text.count("Played sentence") == 6 and text.count("Listening for") == 1

    attacks = report["attacks"]
    for name, got in attacks.items():
        assert not LEAKS & set(got), (name, got)
        assert got[-1] == "closed", (name, got)  # refused and dropped, every time
    for name in ("synthesize", "listen", "story", "transcript-to-host",
                 "sealed-without-pairing", "bad-nonce", "2gb-frame"):
        assert attacks[name] == ["error:unpaired", "closed"], (name, attacks[name])
    for name in ("wrong-secret", "no-secret", "hello-then-nothing", "replayed-board-session"):
        assert attacks[name] == ["pair-challenge", "error:unpaired", "closed"], name
    for name in ("forged-frame", "replayed-frame", "reordered-frames", "spliced-frame",
                 "plain-inside-session"):
        assert [e for e in attacks[name] if e != "sealed"] == ["closed"], name
    # Logged once for the attacker's address, not once per connection.
    assert text.count(f"Refused {net}.3") == 1
    assert "Traceback" not in text


# --- Robustness, in this process on loopback --------------------------------------------

def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


HOSTILE = "127.0.0.2"  # another loopback address: the paired board keeps 127.0.0.1's quota


async def hostile(port):
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(HOSTILE, 0))


@pytest.mark.slow
@pytest.mark.asyncio
async def test_500_idle_connections_and_a_connect_storm_leave_nothing_behind(tmp_path):
    settings = dataclasses.replace(FAST, pairing_seconds=2.0)
    async with voice_host(tmp_path, settings=settings) as (host, port):
        board = ScriptedBoard(port)
        try:
            await board.tell(1, ["Warm up."])  # what a first story allocates, once
            fds = open_fds()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            # 500 idle connections, some with a frame claiming 2 GB, held open.
            idle, most = [], 0
            for i in range(500):
                reader, writer = await hostile(port)
                if i % 50 == 0:
                    writer.write(b'{"type": "x", "payload_length": 2147483648}\n')
                idle.append(writer)
                most = max(most, host.server.connections)
            spoken, done = await board.tell(2, ["Still here.", "Still telling."])
            assert done == {"story": 2, "spoken": 2, "cancelled": False}
            assert most == settings.max_connections_per_peer + 1  # the board's own
            for writer in idle:
                writer.close()
            del idle, writer, reader
            # A connect/close storm: 2,000 connections, 50 at a time.
            for _ in range(40):
                conns = await asyncio.gather(*(hostile(port) for _ in range(50)),
                                             return_exceptions=True)
                for conn in conns:
                    if not isinstance(conn, BaseException):
                        conn[1].close()
                del conns, conn
            await wait_until(lambda: host.server.connections == 1, timeout=30)
            await wait_until(lambda: open_fds() <= fds, timeout=30)
            gc.collect()  # closed streams hold cycles
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            await board.close()
    assert after - before < 256 * 1024, f"{after - before} bytes still held"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_board_that_stops_reading_is_cut_off_and_its_queue_dropped(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    said = []
    async with voice_host(tmp_path) as (host, port):
        real = host.synth
        host.synth = types.SimpleNamespace(  # the real voice, counting what it is asked
            sample_rate=real.sample_rate,
            synthesize=lambda text, voice=None: (said.append(text), real.synthesize(text))[1])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        stream = link.Stream(reader, writer, FAST)
        hog = link.SealedPeer(stream, await link.pair(stream, SECRET, is_client=True))
        await hog.write_event(link.Event(link.STORY_START, {"story": 1, "opening": "x"}))
        long = "The little fox ran over the hill and far away to see the sea. " * 5
        for index in range(16):
            await hog.write_event(link.Event(link.STORY_SENTENCE, {
                "story": 1, "index": index, "text": long}))
        # Then it reads nothing, but keeps talking (pings, each answered): the host's
        # writes back block, and after its write timeout the session is cut off.
        for _ in range(200_000):
            if host.server.connections == 0:
                break
            try:
                await asyncio.wait_for(hog.write_event(link.Event(link.PING)), 1)
            except (asyncio.TimeoutError, OSError):
                break
        await wait_until(lambda: host.server.connections == 0, timeout=30)
        await wait_until(lambda: not play_threads())
        dropped_at = len(said)
        board = ScriptedBoard(port)
        try:
            spoken, done = await board.tell(2, ["Hello."])
        finally:
            await board.close()
        writer.close()
    assert "failed: TimeoutError" in caplog.text  # cut off by a blocked write, not silence
    assert dropped_at < 16 and said[dropped_at:] == ["Hello."]  # the queue went with it
    assert done["spoken"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.iterdir()).name]
    assert next(tmp_path.iterdir()).name.endswith("-story2.wav")


@pytest.mark.asyncio
async def test_an_unpaired_voice_host_refuses_everyone_and_says_so(tmp_path, caplog):
    async with voice_host(tmp_path, secret=b"") as (host, port):
        board = ScriptedBoard(port)
        try:
            await wait_until(lambda: "refused pairing" in caplog.text)
        finally:
            await board.close()
        assert not board.client.up.is_set()
    assert "not paired yet" in caplog.text and list(tmp_path.iterdir()) == []


def test_the_cli_pairs_two_machines_with_one_code(tmp_path):
    run = [sys.executable, "-m", "robot.cli", "pair", "--file"]
    made = subprocess.run([*run, str(tmp_path / "host.key")], capture_output=True, text=True,
                          check=True)
    code = made.stdout.split("--code ")[1].strip()
    subprocess.run([*run, str(tmp_path / "board.key"), "--code", code], check=True,
                   capture_output=True)
    assert seal.load(tmp_path / "host.key") == seal.load(tmp_path / "board.key")
    assert (tmp_path / "board.key").stat().st_mode & 0o777 == 0o600
    again = subprocess.run([*run, str(tmp_path / "host.key")], capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr  # a pairing is not lost


def test_an_empty_secret_file_is_a_place_kept_for_pairing(tmp_path):
    """The units load the secret as a systemd credential, whose file must exist before
    pairing: empty, it means not paired yet, and storybot pair fills it."""
    kept = tmp_path / "pairing.key"
    kept.touch(mode=0o600)
    with pytest.raises(seal.NotPaired, match="not paired yet"):
        seal.load(kept)
    subprocess.run([sys.executable, "-m", "robot.cli", "pair", "--file", str(kept)],
                   check=True, capture_output=True)
    assert len(seal.load(kept)) == seal.SECRET_BYTES


def test_the_voice_host_starts_unpaired_with_todays_flags_and_says_how_to_pair(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(HERE.parent),
           "STORYBOT_PAIRING": str(tmp_path / "none.key")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "voice-host.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "robot.cli", "voice-host", "--host",
                                 "127.0.0.1", "--port", str(port), "--wav-dir", str(tmp_path)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_line(log, "Listening on", proc, 120)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b'{"type": "synthesize", "data": {"text": "Hello."}}\n')
            answer = conn.makefile("rb").read()  # until the host hangs up
    finally:
        proc.terminate()
        proc.wait(30)
    assert json.loads(answer.splitlines()[0])["type"] == "error"
    assert b'"code": "unpaired"' in answer and b"audio" not in answer
    assert "every board is refused. To pair, run `storybot pair`" in log.read_text()
