"""The link: bounded Wyoming framing, keepalive, reconnects, over real loopback TCP."""

import asyncio
import json
import socket
import subprocess
import sys
import tracemalloc

import pytest
from wyoming.event import Event, async_read_event, async_write_event

from robot import link

FAST = link.LinkSettings(ping_seconds=0.1, dead_after_seconds=1.0, backoff_seconds=0.05,
                         max_backoff_seconds=0.2, write_timeout_seconds=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reader_of(*chunks: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    return reader


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


async def read_all(reader, settings=link.LinkSettings()):
    events = []
    while (event := await link.read_event(reader, settings)) is not None:
        events.append(event)
    return events


class Pipe:
    """A StreamWriter stand-in that collects what wyoming writes."""

    def __init__(self):
        self.data = bytearray()

    def writelines(self, lines):
        for part in lines:
            self.data += part

    def write(self, part):
        self.data += part

    async def drain(self):
        pass


async def encoded(*events) -> bytes:
    pipe = Pipe()
    for event in events:
        await async_write_event(event, pipe)
    return bytes(pipe.data)


@pytest.mark.asyncio
async def test_reads_what_wyoming_writes_data_and_payload():
    sent = [Event("story-sentence", {"story": 1, "index": 0, "text": "Hi, 안녕."}),
            Event("audio-chunk", {"rate": 16000}, payload=b"\x01\x02" * 100),
            Event("ping")]
    got = await read_all(reader_of(await encoded(*sent)))
    assert [(e.type, e.data, e.payload) for e in got] == \
        [(e.type, e.data, e.payload) for e in sent]


@pytest.mark.asyncio
async def test_wyoming_reads_what_the_link_writes():
    """The link frames events itself (the board does not import wyoming): the voice
    host's wyoming and any other Wyoming peer must read them as their own."""
    sent = [link.Event("story-sentence", {"story": 1, "index": 0, "text": "Hi, 안녕."}),
            link.Event("audio-chunk", {"rate": 16000}, payload=b"\x01\x02" * 100),
            link.Event("ping"),
            Event("synthesize", {"text": "a wyoming event, sent as it is"})]
    pipe = Pipe()
    for event in sent:
        await link.write_event(pipe, event)
    reader = reader_of(bytes(pipe.data))
    got = [await async_read_event(reader) for _ in sent]
    assert [(e.type, e.data, e.payload) for e in got] == \
        [(e.type, e.data, e.payload) for e in sent]
    assert await async_read_event(reader) is None


def test_the_board_side_does_not_import_wyoming():
    """What the board runs stays out of the wyoming package (and importlib.metadata,
    which it imports): about 3 MiB of the Duo's memory; and out of random (0.1 MiB)."""
    code = ("import sys, robot.board, robot.ask; "
            "print(sorted(m for m in ('wyoming', 'importlib.metadata', 'ssl', '_hashlib', "
            "'hashlib', 'hmac', 'random') "
            "if sys.modules.get(m) is not None))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_reconnects_are_spread_over_a_fifth_either_side():
    waits = {link._jitter(10.0) for _ in range(200)}
    assert min(waits) >= 8.0 and max(waits) <= 12.0
    assert len(waits) > 100  # not one wait for every board


@pytest.mark.asyncio
async def test_malformed_lines_are_dropped_and_reading_goes_on(caplog):
    good = await encoded(Event("pong"))
    stream = b"".join([
        b"not json\n",
        line([1, 2]),
        line({"data": {}}),                                  # no type
        line({"type": 5}),
        line({"type": "x", "data": "str"}),
        line({"type": "x", "data_length": -1}),
        line({"type": "x", "payload_length": True}),
        line({"type": "x", "data_length": 4}) + b"[1] ",      # data not an object
        line({"type": "x", "data_length": 3, "payload_length": 2}) + b"{{{" + b"pp",
        good,
    ])
    got = await read_all(reader_of(stream))
    assert [e.type for e in got] == ["pong"]
    assert caplog.text.count("Dropped") == 9


@pytest.mark.asyncio
async def test_an_oversized_line_is_skipped():
    stream = b'{"type": "x", "pad": "' + b"a" * 200_000 + b'"}\n' + await encoded(Event("pong"))
    assert [e.type for e in await read_all(reader_of(stream))] == ["pong"]


@pytest.mark.asyncio
async def test_oversized_payload_and_data_are_skipped_in_bounded_memory():
    settings = link.LinkSettings(max_payload_bytes=1024, max_data_bytes=1024)
    big = b"\0" * 8_000_000
    reader = asyncio.StreamReader(limit=64 * 1024)
    tracemalloc.start()
    try:
        async def feed():
            reader.feed_data(line({"type": "audio-chunk", "payload_length": len(big)}))
            for i in range(0, len(big), 65536):
                reader.feed_data(big[i:i + 65536])
                await asyncio.sleep(0)
            reader.feed_data(line({"type": "x", "data_length": 5000}) + b" " * 5000)
            reader.feed_data(await encoded(Event("pong")))
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        got = await read_all(reader, settings)
        await feeder
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [e.type for e in got] == ["pong"]
    assert peak < 2_000_000


@pytest.mark.asyncio
async def test_end_of_stream_mid_event_is_the_end():
    stream = line({"type": "x", "payload_length": 10}) + b"abc"
    assert await read_all(reader_of(stream)) == []
    assert await read_all(reader_of(b'{"type": "x"')) == []


def test_check_names_what_is_wrong():
    s = link.LinkSettings(max_text_chars=10)
    assert link.check(Event(link.STORY_STOP, {"story": 3}), s) is None
    assert link.check(Event("whatever", {}), s) is None
    assert "story" in link.check(Event(link.STORY_STOP, {"story": "3"}), s)
    assert "story" in link.check(Event(link.STORY_STOP, {"story": True}), s)
    assert link.check(Event(link.STORY_DONE, {"story": 1, "spoken": 0, "cancelled": True}), s) \
        is None
    assert "11 characters" in link.check(Event(link.SYNTHESIZE, {"text": "x" * 11}), s)


def test_parse_address():
    assert link.parse_address("robot.local:10720") == ("robot.local", 10720)
    assert link.parse_address(":5") == ("127.0.0.1", 5)
    assert link.parse_address("[::1]:7") == ("::1", 7)
    with pytest.raises(ValueError):
        link.parse_address("nohost")


class Echo(link.LinkHandler):
    """Sends every event back; records its own end."""

    ended = []

    def __init__(self, reader, writer, session=None):
        super().__init__(reader, writer, FAST, session)

    async def handle_event(self, event):
        await self.link.send(event)
        return event.type != "bye"

    async def disconnect(self):
        Echo.ended.append(self.link.name)


async def start_server(port, factory=Echo, secret=None, settings=FAST):
    server = link.LinkServer("127.0.0.1", port, factory, settings, secret)
    task = asyncio.create_task(server.run())
    await asyncio.wait_for(server.listening.wait(), 5)
    return task


async def stop(task):
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class Client:
    """A LinkClient whose events land in a queue."""

    def __init__(self, port, secret=None):
        self.events = asyncio.Queue()
        self.downs = 0
        self.client = link.LinkClient("127.0.0.1", port, self._handle, FAST,
                                      on_down=self._down, secret=secret)
        self.task = asyncio.create_task(self.client.run())

    async def _handle(self, event):
        await self.events.put(event)
        return True

    async def _down(self):
        self.downs += 1

    async def next(self, timeout=5):
        return await asyncio.wait_for(self.events.get(), timeout)


@pytest.mark.asyncio
async def test_a_quiet_link_stays_up_on_pings_alone():
    port = free_port()
    server = await start_server(port)
    client = Client(port)
    try:
        await asyncio.wait_for(client.client.up.wait(), 5)
        await asyncio.sleep(FAST.dead_after_seconds * 2)  # nothing but pings meanwhile
        assert client.downs == 0
        await client.client.send(Event("hello", {"n": 1}))
        assert (await client.next()).data == {"n": 1}
    finally:
        await stop(client.task)
        await stop(server)


@pytest.mark.asyncio
async def test_a_silent_peer_is_taken_for_dead():
    # A server that accepts and then says nothing, not even pong: a hung host.
    port = free_port()
    held = []
    server = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", port)
    client = Client(port)
    try:
        await asyncio.wait_for(client.client.up.wait(), 5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while client.downs == 0:
            await asyncio.sleep(0.02)
        assert loop.time() - started < FAST.dead_after_seconds + 1
        with pytest.raises(link.LinkClosed):
            await client.client.send(Event("x"))
    finally:
        await stop(client.task)
        server.close()
        for w in held:
            w.close()


@pytest.mark.asyncio
async def test_the_client_reconnects_after_the_server_restarts():
    port = free_port()
    server = await start_server(port)
    client = Client(port)
    try:
        await asyncio.wait_for(client.client.up.wait(), 5)
        await stop(server)  # every connection is closed with it
        while client.downs == 0:
            await asyncio.sleep(0.01)
        with pytest.raises(link.LinkClosed):
            await client.client.send(Event("lost"))
        server = await start_server(port)
        await asyncio.wait_for(client.client.up.wait(), 5)
        await client.client.send(Event("again"))
        assert (await client.next()).type == "again"
    finally:
        await stop(client.task)
        await stop(server)


@pytest.mark.asyncio
async def test_the_server_waits_for_a_busy_port():
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    server = link.LinkServer("127.0.0.1", port, Echo, FAST)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.sleep(0.2)
        assert not server.listening.is_set()
        blocker.close()
        await asyncio.wait_for(server.listening.wait(), 5)
    finally:
        blocker.close()
        await stop(task)


@pytest.mark.asyncio
async def test_stopping_the_server_ends_every_handler():
    Echo.ended.clear()
    port = free_port()
    server = await start_server(port)
    clients = [Client(port) for _ in range(3)]
    try:
        for c in clients:
            await asyncio.wait_for(c.client.up.wait(), 5)
        await stop(server)
        assert len(Echo.ended) == 3  # disconnect() ran before run() returned
    finally:
        for c in clients:
            await stop(c.task)


@pytest.mark.asyncio
async def test_the_handler_can_hang_up_and_malformed_known_events_are_dropped(caplog):
    port = free_port()
    server = await start_server(port)
    client = Client(port)
    try:
        await asyncio.wait_for(client.client.up.wait(), 5)
        await client.client.send(Event(link.STORY_STOP, {"story": "one"}))  # malformed
        await client.client.send(Event("after"))
        assert (await client.next()).type == "after"
        assert "Dropped a malformed 'story-stop' event" in caplog.text
        await client.client.send(Event("bye"))
        assert (await client.next()).type == "bye"
        while client.downs == 0:
            await asyncio.sleep(0.01)
    finally:
        await stop(client.task)
        await stop(server)
