"""The link between board and voice host: Wyoming events over TCP, bounded and kept alive.

Both machines speak the Wyoming protocol: one JSON line per event, then optional extra
data and a binary payload whose lengths the line gives. This module frames events itself
rather than through the ``wyoming`` package (whose own events pass through here as they
are, and which reads these as its own: tests/test_link.py): on the board, importing that
package costs about 3 MiB of its 38 MB (it looks its own version up through
importlib.metadata, which imports email, zipfile, csv and more).
Standard events carry what Wyoming already names (``transcript``, ``synthesize``,
``audio-start``/``audio-chunk``/``audio-stop``, ``ping``/``pong``, ``error``); the
story has events of its own, listed in ``FIELDS`` with the fields their data must hold.

Board to voice host::

    listen          {listen: id, seconds}              open the mic for a prompt
    story-start     {story: id, opening, source}       a story begins
    story-sentence  {story, index, text}               one finished, clean sentence
    story-end       {story, sentences}                 no more sentences will come
    story-stop      {story}                            stop speaking now

Voice host to board::

    transcript      {text, listen: id}                 what was heard ("" for nothing)
    story-spoken    {story, index, synth_seconds, audio_seconds}   a sentence was played
    story-done      {story, spoken, cancelled}         the story's audio is over
    error           {text, code, story, index}         a sentence it will not speak
    error           {text, code, listen}               a listen it cannot do (mic-busy)

A typed prompt (``storybot ask``) to the board's control port::

    story-request   {text}      answered with story-start, story-sentence..., story-end,
                                or error {text, code: "busy" | "bad-prompt" | "failed"}

Between a board and its voice host (and on a control port that is not on loopback)
every connection first pairs, and then every event travels sealed: see robot.seal.

Reading is bounded so a bad peer cannot take the memory: the JSON line is capped by
the asyncio stream limit (64 KiB), data and payload by ``LinkSettings``. Malformed,
oversized and unknown events are logged and dropped; the connection goes on (a sealed
frame that fails its check drops it). Servers cap their connections. Each side pings;
a peer silent for ``dead_after_seconds`` is taken for dead and dropped, so a pulled
cable cannot hang a story.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import seal

_LOGGER = logging.getLogger(__name__)

LISTEN = "listen"
TRANSCRIPT = "transcript"
STORY_REQUEST = "story-request"
STORY_START = "story-start"
STORY_SENTENCE = "story-sentence"
STORY_END = "story-end"
STORY_STOP = "story-stop"
STORY_SPOKEN = "story-spoken"
STORY_DONE = "story-done"
SYNTHESIZE = "synthesize"
ERROR = "error"
PING = "ping"
PONG = "pong"

# Events this link checks: type -> {field: accepted type(s)}. Other fields may come too.
FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    LISTEN: {"listen": int, "seconds": (int, float)},
    TRANSCRIPT: {"text": str, "listen": int},
    STORY_REQUEST: {"text": str},
    STORY_START: {"story": int, "opening": str},
    STORY_SENTENCE: {"story": int, "index": int, "text": str},
    STORY_END: {"story": int, "sentences": int},
    STORY_STOP: {"story": int},
    STORY_SPOKEN: {"story": int, "index": int},
    STORY_DONE: {"story": int, "spoken": int, "cancelled": bool},
    SYNTHESIZE: {"text": str},
    ERROR: {"text": str},
}

_DISCARD_CHUNK = 64 * 1024


@dataclass(frozen=True)
class LinkSettings:
    """Limits and timing of one link, the same on both sides."""

    max_data_bytes: int = 64 * 1024
    """Largest extra data of one event (bytes); larger events are skipped unread."""
    max_payload_bytes: int = 256 * 1024
    """Largest binary payload of one event (bytes); larger ones are skipped unread."""
    max_text_chars: int = 4000
    """Longest text field accepted (characters); a sentence is at most a few hundred."""
    ping_seconds: float = 2.0
    """How often each side pings the other (s)."""
    dead_after_seconds: float = 7.0
    """Silence after which the peer is taken for dead (s); a few pings long."""
    write_timeout_seconds: float = 5.0
    """Longest wait for a peer to take what is written (s), then the link is dropped."""
    connect_timeout_seconds: float = 5.0
    """Longest wait for a TCP connection (s)."""
    backoff_seconds: float = 0.5
    """First wait before reconnecting or rebinding (s); doubles on each failure."""
    max_backoff_seconds: float = 10.0
    """Longest wait between tries (s)."""
    pairing_seconds: float = 5.0
    """Longest a new connection may take to prove it is paired (s), then it is dropped."""
    max_connections: int = 32
    """Connections a server holds at once (count), paired or not; more are refused."""
    max_connections_per_peer: int = 4
    """Connections a server holds from one address at once (count)."""


class LinkClosed(ConnectionError):
    """The link is down: nothing can be sent now."""


@dataclass
class Event:
    """One Wyoming event. Anything with these three attributes can be sent, such as the
    ``wyoming`` package's own events on the voice host."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = None


def error_event(text: str, code: str) -> Event:
    return Event(ERROR, {"text": text, "code": code})


class Refused(ValueError):
    """A request that will not be served; text and code go back as an ``error`` event."""

    def __init__(self, text: str, code: str) -> None:
        super().__init__(text)
        self.code = code


async def write_event(writer: asyncio.StreamWriter, event: Event) -> None:
    """Frames event as the ``wyoming`` package does: the line, the data, the payload."""
    header: dict[str, Any] = {"type": event.type}
    data = json.dumps(event.data, ensure_ascii=False).encode() if event.data else b""
    if data:
        header["data_length"] = len(data)
    if event.payload:
        header["payload_length"] = len(event.payload)
    writer.writelines((json.dumps(header, ensure_ascii=False).encode(), b"\n"))
    if data:
        writer.write(data)
    if event.payload:
        writer.write(event.payload)
    await writer.drain()


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """("host", port) from "HOST:PORT" or ":PORT"; "[::1]:PORT" for IPv6."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or default_host, int(port)


def check(event: Event, settings: LinkSettings) -> str | None:
    """Why a known event is malformed, or None if it is fine (unknown types pass)."""
    for name, kind in FIELDS.get(event.type, {}).items():
        value = event.data.get(name)
        # bool is an int to Python, but never a valid id, index or count.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            return f"field {name!r} is {value!r}"
        if isinstance(value, str) and len(value) > settings.max_text_chars:
            return f"field {name!r} is {len(value)} characters long"
    return None


async def read_event(reader: asyncio.StreamReader, settings: LinkSettings) -> Event | None:
    """The next well-framed event, or None at the end of the stream.

    Unlike wyoming.event.async_read_event, which trusts the lengths a peer announces
    and gives up on the first bad line, this skips what is malformed or too large
    (reading it in small chunks) and carries on with the next event.
    """
    while True:
        line = await _read_line(reader)
        if line is None:
            return None
        if not line:
            _LOGGER.warning("Dropped an event line longer than the stream limit")
            continue
        try:
            header = json.loads(line)
            kind, data = header["type"], header.get("data") or {}
            data_length = header.get("data_length") or 0
            payload_length = header.get("payload_length") or 0
            if not (isinstance(kind, str) and isinstance(data, dict)
                    and _is_length(data_length) and _is_length(payload_length)):
                raise ValueError("bad field types")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            _LOGGER.warning("Dropped a malformed event line (%s): %.80r", err, line)
            continue
        if data_length > settings.max_data_bytes or payload_length > settings.max_payload_bytes:
            _LOGGER.warning("Dropped an oversized %r event (%d data, %d payload bytes)",
                            kind, data_length, payload_length)
            if not await _discard(reader, data_length + payload_length):
                return None
            continue
        try:
            if data_length:
                extra = json.loads(await reader.readexactly(data_length))
                if not isinstance(extra, dict):
                    raise ValueError("data is not an object")
                data.update(extra)
            payload = await reader.readexactly(payload_length) if payload_length else None
        except asyncio.IncompleteReadError:
            return None
        except ValueError as err:
            # The data was read whole, so the stream is still in step: skip the payload too.
            _LOGGER.warning("Dropped a %r event with malformed data (%s)", kind, err)
            if not await _discard(reader, payload_length):
                return None
            continue
        return Event(kind, data, payload)


def _is_length(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One line; b"" for one over the stream limit (skipped); None at the end of the stream."""
    too_long = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as err:
            # What overran is still buffered: drop it and look for the line's end again.
            await reader.readexactly(err.consumed)
            too_long = True
            continue
        return b"" if too_long else line


async def _discard(reader: asyncio.StreamReader, count: int) -> bool:
    """Read and forget count bytes; False if the stream ended first."""
    while count > 0:
        chunk = await reader.read(min(count, _DISCARD_CHUNK))
        if not chunk:
            return False
        count -= len(chunk)
    return True


async def within(awaitable: Awaitable, seconds: float):
    """awaitable's result, or asyncio.TimeoutError after seconds.

    Python 3.11's asyncio.wait_for loses a cancellation that lands just as the awaited
    thing finishes (a refused connect, an event read), which can leave a task that
    was told to stop running forever; asyncio.wait never does.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not done:
        raise asyncio.TimeoutError
    return task.result()


Handler = Callable[[Event], Awaitable[bool]]


class Link:
    """One open connection: keepalive, bounded reads, and sends that cannot hang.

    peer is a Stream (bounded reads, see read_event) or a SealedPeer around one:
    read_event() and write_event(). run() answers pings itself and hands every other well-formed
    event to a handler until the peer closes, falls silent, or the handler returns False.
    """

    def __init__(self, peer, settings: LinkSettings, name: str) -> None:
        self._peer = peer
        self.settings = settings
        self.name = name
        self.closed = False

    async def send(self, event: Event) -> None:
        """Write one event; raises LinkClosed if the link is (or goes) down."""
        if self.closed:
            raise LinkClosed(f"link to {self.name} is closed")
        try:
            await within(self._peer.write_event(event), self.settings.write_timeout_seconds)
        except (OSError, asyncio.TimeoutError) as err:
            # A peer that takes nothing for this long is as good as gone.
            self.closed = True
            raise LinkClosed(f"link to {self.name} failed: {err!r}") from err

    async def run(self, handle: Handler) -> None:
        pinger = asyncio.create_task(self._ping(), name=f"ping {self.name}")
        try:
            while True:
                try:
                    event = await within(self._peer.read_event(),
                                         self.settings.dead_after_seconds)
                except asyncio.TimeoutError:
                    _LOGGER.warning("No word from %s for %.1f s: taking it for dead",
                                    self.name, self.settings.dead_after_seconds)
                    return
                except seal.PairingError as err:
                    _LOGGER.warning("Dropped the link to %s: %s", self.name, err)
                    return
                except OSError as err:
                    _LOGGER.info("Link to %s broke: %r", self.name, err)
                    return
                if event is None:
                    _LOGGER.info("%s closed the link", self.name)
                    return
                if event.type == PING:
                    await self.send(Event(PONG, {"text": event.data.get("text")}))
                    continue
                if event.type == PONG:
                    continue
                problem = check(event, self.settings)
                if problem is not None:
                    _LOGGER.warning("Dropped a malformed %r event from %s: %s",
                                    event.type, self.name, problem)
                    continue
                if not await handle(event):
                    return
        except LinkClosed as err:
            _LOGGER.info("%s", err)
        finally:
            self.closed = True
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.settings.ping_seconds)
                await self.send(Event(PING, {"text": None}))
        except LinkClosed:
            pass  # the reader notices too, and ends the link


class Stream:
    """One TCP connection's events, read with the bounded reader."""

    def __init__(self, reader: asyncio.StreamReader | None,
                 writer: asyncio.StreamWriter | None, settings: LinkSettings) -> None:
        self._reader, self._writer = reader, writer
        self.settings = settings

    async def read_event(self) -> Event | None:
        return await read_event(self._reader, self.settings)

    async def write_event(self, event: Event) -> None:
        await write_event(self._writer, event)


class BoundedTcpClient(Stream):
    """A TCP connection to a server, read with the bounded reader."""

    def __init__(self, host: str, port: int, settings: LinkSettings) -> None:
        super().__init__(None, None, settings)
        self.host, self.port = host, port

    async def connect(self) -> None:
        self._reader, self._writer = await within(
            asyncio.open_connection(self.host, self.port),
            self.settings.connect_timeout_seconds)

    async def disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            await writer.wait_closed()


# --- Pairing (robot.seal): a handshake before any other event, then sealed frames -------

class SealedPeer:
    """A paired peer: events go out sealed and come in checked, in the session's order."""

    def __init__(self, peer, session: seal.Session) -> None:
        self._peer, self._session = peer, session

    async def read_event(self) -> Event | None:
        event = await self._peer.read_event()
        if event is None:
            return None
        if event.type != seal.SEALED or not event.payload:
            raise seal.PairingError(f"an unsealed {event.type!r} event on a paired link")
        return Event(*seal.decode_frame(self._session.open(event.payload)))

    async def write_event(self, event: Event) -> None:
        # Sealing and writing happen with no await between them, so frames leave in the
        # order of their counters even when several tasks send.
        frame = seal.encode_frame(event.type, event.data, event.payload)
        await self._peer.write_event(Event(seal.SEALED, payload=self._session.seal(frame)))


async def pair(peer, secret: bytes, *, is_client: bool) -> seal.Session:
    """The challenge-response of robot.seal over peer; PairingError if either side fails."""
    if not secret:
        raise seal.PairingError("not paired yet")

    async def expect(kind: str) -> dict:
        event = await peer.read_event()
        if event is None:
            raise seal.PairingError("the peer hung up while pairing")
        if event.type == ERROR and event.data.get("code") == "busy":
            raise ConnectionRefusedError(f"the peer is busy: {event.data.get('text')!r:.200}")
        if event.type == ERROR:
            raise seal.PairingError(f"the peer refused: {event.data.get('text')!r:.200}")
        if event.type != kind:
            raise seal.PairingError(f"expected {kind!r} first, got {event.type!r:.40}")
        return event.data

    def field_bytes(data: dict, name: str, size: int) -> bytes:
        value = data.get(name)
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != size:
            raise seal.PairingError(f"{name!r} is not {size} hex bytes")
        return raw

    if is_client:
        mine = os.urandom(seal.NONCE_BYTES)
        await peer.write_event(Event(seal.HELLO, {"nonce": mine.hex()}))
        data = await expect(seal.CHALLENGE)
        theirs = field_bytes(data, "nonce", seal.NONCE_BYTES)
        if not seal.compare_digest(field_bytes(data, "proof", seal.TAG_BYTES),
                                   seal.proof(secret, b"server", mine, theirs)):
            raise seal.PairingError("the server does not hold our pairing secret")
        await peer.write_event(Event(seal.PROOF, {
            "proof": seal.proof(secret, b"client", mine, theirs).hex()}))
        return seal.Session(secret, mine, theirs, is_board=True)
    theirs = field_bytes(await expect(seal.HELLO), "nonce", seal.NONCE_BYTES)
    mine = os.urandom(seal.NONCE_BYTES)
    await peer.write_event(Event(seal.CHALLENGE, {
        "nonce": mine.hex(), "proof": seal.proof(secret, b"server", theirs, mine).hex()}))
    answer = field_bytes(await expect(seal.PROOF), "proof", seal.TAG_BYTES)
    if not seal.compare_digest(answer, seal.proof(secret, b"client", theirs, mine)):
        raise seal.PairingError("wrong proof: the peer does not hold our pairing secret")
    return seal.Session(secret, theirs, mine, is_board=False)


class _OncePerPeer:
    """Logs a refusal the first time for each address, then only counts (a storm of
    connections must not become a storm of log lines)."""

    _REMEMBERED = 256

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def log(self, address: str, message: str, *args) -> None:
        if address not in self._seen:
            if len(self._seen) >= self._REMEMBERED:
                self._seen.clear()
            self._seen[address] = 0
            _LOGGER.warning(message + " (further refusals of %s are not logged)",
                            *args, address)
        self._seen[address] += 1


class LinkClient:
    """Keeps a link to a server up: connects, pairs, reconnects with backoff, forever.

    With a secret, each connection first pairs (robot.seal) and then seals every event;
    a server that fails is logged once and tried again after the longest backoff.
    Events from the server go to handle(event). on_down() is awaited after a link goes
    down, so the owner can react (the board stops a story whose voice is gone); up is
    set while a link is up.
    """

    def __init__(self, host: str, port: int, handle: Handler, settings: LinkSettings,
                 on_down: Callable[[], Awaitable[None]] | None = None,
                 secret: bytes | None = None) -> None:
        self.host, self.port = host, port
        self.settings = settings
        self._handle = handle
        self._on_down = on_down
        self._secret = secret
        self.link: Link | None = None
        self.up = asyncio.Event()

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    async def send(self, event: Event) -> None:
        """Send over the current link; raises LinkClosed while there is none."""
        link = self.link
        if link is None:
            raise LinkClosed(f"not connected to {self.name}")
        await link.send(event)

    async def run(self) -> None:
        backoff = self.settings.backoff_seconds
        refused = False
        while True:
            client = BoundedTcpClient(self.host, self.port, self.settings)
            try:
                await client.connect()
                peer = client
                if self._secret is not None:
                    peer = SealedPeer(client, await within(
                        pair(client, self._secret, is_client=True),
                        self.settings.pairing_seconds))
            except (OSError, asyncio.TimeoutError) as err:
                await _close(client)
                if isinstance(err, seal.PairingError):
                    # Once, not at every retry: the fix (pairing) takes a person.
                    (_LOGGER.debug if refused else _LOGGER.warning)(
                        "%s refused pairing (%s); run `storybot pair` (see systemd/README.md)"
                        ", retrying every %.0f s", self.name, err,
                        self.settings.max_backoff_seconds)
                    refused, backoff = True, self.settings.max_backoff_seconds
                else:
                    _LOGGER.info("Cannot reach %s (%r); retrying in %.1f s",
                                 self.name, err, backoff)
                await asyncio.sleep(_jitter(backoff))
                backoff = min(backoff * 2, self.settings.max_backoff_seconds)
                continue
            backoff, refused = self.settings.backoff_seconds, False
            _LOGGER.info("Connected to %s%s", self.name,
                         " (paired, sealed)" if self._secret is not None else "")
            link = Link(peer, self.settings, self.name)
            try:
                self.link = link
                self.up.set()
                await link.run(self._handle)
            finally:
                self.link = None
                self.up.clear()
                await _close(client)
                if self._on_down is not None:
                    await self._on_down()
            await asyncio.sleep(_jitter(backoff))


async def _close(client: BoundedTcpClient) -> None:
    try:
        await within(client.disconnect(), 1.0)
    except (OSError, asyncio.TimeoutError):
        pass  # the socket is closed anyway; only the goodbye was lost


def _jitter(seconds: float) -> float:
    # Several boards dropped by one voice host restart should not all knock at once.
    # os.urandom rather than the random module, which would cost the board 0.1 MiB.
    return seconds * (0.8 + 0.4 * int.from_bytes(os.urandom(2), "big") / 0xFFFF)


async def open_link(host: str, port: int, settings: LinkSettings, secret: bytes | None,
                    name: str) -> tuple[BoundedTcpClient, Link]:
    """A client's link to host:port, paired and sealed when secret is given (else plain);
    the caller disconnects the client when done."""
    client = BoundedTcpClient(host, port, settings)
    await client.connect()
    peer = client
    if secret is not None:
        try:
            peer = SealedPeer(client, await within(pair(client, secret, is_client=True),
                                                   settings.pairing_seconds))
        except BaseException:
            await client.disconnect()
            raise
    return client, Link(peer, settings, name)


class LinkHandler:
    """A server's side of one connection: bounded reads and keepalive, sealed by session
    (the server paired the connection before it made the handler) or plain (None).

    Subclasses implement handle_event (return False to hang up) and may override
    disconnect, which runs once the link is over, whatever ended it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 settings: LinkSettings, session: seal.Session | None = None) -> None:
        self.reader, self.writer = reader, writer
        stream = Stream(reader, writer, settings)
        self.link = Link(stream if session is None else SealedPeer(stream, session), settings,
                         _peer_name(writer))
        self.finished = asyncio.Event()

    async def handle_event(self, event: Event) -> bool:
        raise NotImplementedError

    async def disconnect(self) -> None:
        pass

    async def run(self) -> None:
        try:
            await self.link.run(self.handle_event)
        finally:
            try:
                await self.disconnect()
            finally:
                self.writer.close()
                self.finished.set()

    def stop(self) -> None:
        """Ends the link: its reader sees the end of the stream."""
        self.writer.close()
        self.reader.feed_eof()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if peer else "peer"


HandlerFactory = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "seal.Session | None"],
                          LinkHandler]


class LinkServer:
    """A TCP server kept listening: binding is retried with backoff.

    The retry matters after a quick restart, when the port may still be held.
    Connections are capped in total and per address. With a secret (see pair), each
    connection must pair within pairing_seconds before a handler is made for it; b""
    (no pairing yet) refuses every peer. A refused peer gets one ``error`` event and is
    dropped. handler_factory(reader, writer, session) makes the LinkHandler.
    """

    def __init__(self, host: str, port: int, handler_factory: HandlerFactory,
                 settings: LinkSettings, secret: bytes | None = None) -> None:
        self.host, self.port = host, port
        self.settings = settings
        self._factory = handler_factory
        self._secret = secret
        self._handlers: set[LinkHandler] = set()
        self._pairing: set[asyncio.Task] = set()
        self._open: dict[str, int] = {}
        self._refusals = _OncePerPeer()
        self.listening = asyncio.Event()

    @property
    def connections(self) -> int:
        return sum(self._open.values())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self.connections >= self.settings.max_connections \
                or self._open.get(address, 0) >= self.settings.max_connections_per_peer:
            try:
                await self._refuse(writer, address, "busy", "too many connections")
            finally:
                writer.close()
            return
        self._open[address] = self._open.get(address, 0) + 1
        try:
            session = None
            if self._secret is not None:
                task = asyncio.current_task()
                self._pairing.add(task)
                try:
                    session = await within(pair(Stream(reader, writer, self.settings),
                                                self._secret, is_client=False),
                                           self.settings.pairing_seconds)
                except (OSError, asyncio.TimeoutError) as err:
                    why = str(err) or "it did not pair in time"
                    await self._refuse(writer, address, "unpaired", why)
                    return
                except asyncio.CancelledError:
                    # The server is closing. Returning, not raising: asyncio's stream
                    # callback would log a cancelled connection task as an error.
                    return
                finally:
                    self._pairing.discard(task)
            self._handlers = {h for h in self._handlers if not h.finished.is_set()}
            handler = self._factory(reader, writer, session)
            self._handlers.add(handler)
            await handler.run()
        finally:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]
            writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, address: str, code: str,
                      why: str) -> None:
        text = ("not paired with this host: pair both machines with `storybot pair`"
                if code == "unpaired" else why)
        self._refusals.log(address, "Refused %s on %s:%d: %s", address, self.host, self.port,
                           why)
        try:  # one clear answer, but a peer that reads nothing cannot hold us up
            await within(write_event(writer, error_event(text, code)), 1.0)
        except (OSError, asyncio.TimeoutError):
            pass

    async def run(self) -> None:
        backoff = self.settings.backoff_seconds
        while True:
            try:
                server = await asyncio.start_server(self._serve, self.host, self.port)
            except OSError as err:
                _LOGGER.warning("Cannot listen on %s:%d (%s); retrying in %.1f s",
                                self.host, self.port, err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.max_backoff_seconds)
                continue
            _LOGGER.info("Listening on %s:%d", self.host, self.port)
            self.listening.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            finally:
                self.listening.clear()
                # Closes every connection and waits for each handler's disconnect(), so
                # nothing a connection started (audio, threads) outlives the server.
                server.close()
                for task in self._pairing:
                    task.cancel()
                for handler in self._handlers:
                    handler.stop()
                await asyncio.gather(*self._pairing, return_exceptions=True)
                await asyncio.gather(*(h.finished.wait() for h in self._handlers))
