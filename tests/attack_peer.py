"""The other side of test_attack.py, run in the attacker's network namespace.

    python attack_peer.py HOST PORT BOARD_IP ATTACKER_IP SECRET_CODE

A paired board (from BOARD_IP) asks the voice host to listen and tells it a story while,
from ATTACKER_IP, every attack is tried once and 50 hostile connections flood the host.
Prints one JSON object: what the board got, and every event each attack got back.
"""

import asyncio
import json
import os
import sys
import time

from robot import link, seal

HOST, PORT, BOARD_IP, ATTACKER_IP, CODE = sys.argv[1:6]
PORT = int(PORT)
SECRET = seal.from_code(CODE)
SETTINGS = link.LinkSettings()
STORY = ["Once upon a time, there was a little fox.", "The fox liked to run in the snow.",
         "One day, the fox found a red ball.", "She played with the ball all day.",
         "Then she went home to sleep.", "The end."]
FLOOD = 50
FLOOD_SECONDS = 120  # every loop here is bounded in count and in time


def frame(event: link.Event) -> bytes:
    header = {"type": event.type}
    data = json.dumps(event.data).encode() if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    return json.dumps(header).encode() + b"\n" + data + (event.payload or b"")


async def connect(source=ATTACKER_IP):
    return await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))


async def answers(reader, seconds=8.0) -> list[str]:
    """Every event the host sends until it hangs up ("closed"), or "silent" after seconds
    (longer than the host gives a connection to pair)."""
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while True:
            event = await asyncio.wait_for(link.read_event(reader, SETTINGS),
                                           max(0.01, deadline - loop.time()))
            if event is None:
                return got + ["closed"]
            got.append(f"error:{event.data.get('code')}" if event.type == link.ERROR
                       else event.type)
    except asyncio.TimeoutError:
        return got + ["silent"]
    except OSError:
        return got + ["closed"]


async def plain(*events: link.Event) -> list[str]:
    """Events sent as a plain Wyoming client would, with no pairing."""
    reader, writer = await connect()
    writer.write(b"".join(frame(e) for e in events))
    got = await answers(reader)
    writer.close()
    return got


async def hello(writer, reader):
    nonce = os.urandom(seal.NONCE_BYTES)
    writer.write(frame(link.Event(seal.HELLO, {"nonce": nonce.hex()})))
    challenge = await link.read_event(reader, SETTINGS)
    return nonce, bytes.fromhex(challenge.data["nonce"])


async def wrong_proof(secret: bytes) -> list[str]:
    reader, writer = await connect()
    mine, theirs = await hello(writer, reader)
    writer.write(frame(link.Event(seal.PROOF, {
        "proof": seal.proof(secret, b"client", mine, theirs).hex()})))
    writer.write(frame(link.Event(link.SYNTHESIZE, {"text": "Hello."})))
    got = await answers(reader)
    writer.close()
    return ["pair-challenge"] + got


async def hijacked(tamper) -> list[str]:
    """A paired connection into which an on-path attacker injects frames: tamper(session,
    other) gives the bytes to inject (other: a second session's, for splicing)."""
    sessions, streams = [], []
    for _ in range(2):
        reader, writer = await connect()
        stream = link.Stream(reader, writer, SETTINGS)
        sessions.append(await link.pair(stream, SECRET, is_client=True))
        streams.append((reader, writer))
    (reader, writer), (_, other_writer) = streams
    writer.write(tamper(sessions[0], sessions[1]))
    got = await answers(reader)
    writer.close()
    other_writer.close()
    return got


def sealed(session, event: link.Event) -> bytes:
    return frame(link.Event(seal.SEALED, payload=session.seal(
        seal.encode_frame(event.type, event.data, event.payload))))


START = link.Event(link.STORY_START, {"story": 66, "opening": "x", "source": "attack"})
SAY = link.Event(link.STORY_SENTENCE, {"story": 66, "index": 0, "text": "I am listening."})
END = link.Event(link.STORY_END, {"story": 66, "sentences": 1})
LISTEN = link.Event(link.LISTEN, {"listen": 1, "seconds": 5})


def flipped(data: bytes) -> bytes:
    return data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]


ATTACKS = {
    "synthesize": lambda: plain(link.Event(link.SYNTHESIZE, {"text": "Go to hell."})),
    "listen": lambda: plain(LISTEN),
    "story": lambda: plain(START, SAY, END),
    "transcript-to-host": lambda: plain(link.Event(link.TRANSCRIPT, {"text": "x", "listen": 1})),
    "sealed-without-pairing": lambda: plain(link.Event(seal.SEALED, payload=os.urandom(80))),
    "hello-then-nothing": lambda: plain(link.Event(seal.HELLO, {"nonce": "00" * 16})),
    "bad-nonce": lambda: plain(link.Event(seal.HELLO, {"nonce": "zz"})),
    "2gb-frame": lambda: plain(link.Event("audio-chunk", {"payload_length": 2**31})),
    "wrong-secret": lambda: wrong_proof(os.urandom(32)),
    "no-secret": lambda: wrong_proof(b""),
    "forged-frame": lambda: hijacked(lambda s, o: flipped(sealed(s, START))),
    "replayed-frame": lambda: hijacked(lambda s, o: (lambda f: f + f)(sealed(s, START))),
    "reordered-frames": lambda: hijacked(
        lambda s, o: (lambda a, b: b + a)(sealed(s, START), sealed(s, SAY))),
    "spliced-frame": lambda: hijacked(lambda s, o: sealed(o, START)),
    "plain-inside-session": lambda: hijacked(lambda s, o: frame(LISTEN)),
}


async def replay_captured(captured: bytes) -> list[str]:
    """The bytes a paired board sent, played back on a new connection."""
    reader, writer = await connect()
    writer.write(captured)
    got = await answers(reader)
    writer.close()
    return got


class Recorder:
    """Keeps what the board writes, as a sniffer on the network would."""

    def __init__(self, writer):
        self._writer, self.data = writer, bytearray()

    def write(self, data):
        self.data += data
        self._writer.write(data)

    def writelines(self, parts):
        for part in parts:
            self.write(part)

    def __getattr__(self, name):
        return getattr(self._writer, name)


async def board() -> dict:
    reader, writer = await connect(BOARD_IP)
    recorder = Recorder(writer)
    stream = link.Stream(reader, recorder, SETTINGS)
    peer = link.SealedPeer(stream, await link.pair(stream, SECRET, is_client=True))
    events: asyncio.Queue = asyncio.Queue()
    conn = link.Link(peer, SETTINGS, "voice host")

    async def handle(event):
        await events.put(event)
        return True

    runner = asyncio.create_task(conn.run(handle))

    async def next_of(kind):
        while (event := await asyncio.wait_for(events.get(), 120)).type != kind:
            pass
        return event

    await conn.send(LISTEN)
    transcript = (await next_of(link.TRANSCRIPT)).data["text"]
    await conn.send(link.Event(link.STORY_START, {"story": 1, "opening": STORY[0],
                                                  "source": "test"}))
    for index, text in enumerate(STORY):
        await conn.send(link.Event(link.STORY_SENTENCE, {"story": 1, "index": index,
                                                         "text": text}))
    await conn.send(link.Event(link.STORY_END, {"story": 1, "sentences": len(STORY)}))
    done = (await next_of(link.STORY_DONE)).data
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    writer.close()
    return {"transcript": transcript, "done": done, "captured": bytes(recorder.data)}


async def flooder(stop: asyncio.Event, counts: dict) -> None:
    """One hostile client: connect, send junk or nothing, hold on, again, until stop."""
    junk = [b"", frame(link.Event(link.SYNTHESIZE, {"text": "x" * 3900})),
            frame(LISTEN), b'{"type": "audio-chunk", "payload_length": 2147483648}\n']
    deadline = time.monotonic() + FLOOD_SECONDS
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            reader, writer = await connect()
        except OSError:
            await asyncio.sleep(0.05)
            continue
        counts["connections"] += 1
        writer.write(junk[counts["connections"] % len(junk)])
        for event in await answers(reader, seconds=1.0):
            counts[event] = counts.get(event, 0) + 1
        writer.close()


async def main() -> None:
    stop = asyncio.Event()
    counts = {"connections": 0}
    flood = [asyncio.create_task(flooder(stop, counts)) for _ in range(FLOOD)]
    told = await board()
    stop.set()
    await asyncio.gather(*flood)
    results = {name: await attack() for name, attack in ATTACKS.items()}
    results["replayed-board-session"] = await replay_captured(told.pop("captured"))
    print(json.dumps({"board": told, "attacks": results, "flood": counts}))


asyncio.run(main())
