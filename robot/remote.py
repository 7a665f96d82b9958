"""Speech by stock Wyoming servers: a remote TTS (such as wyoming-piper) and a remote ASR.

RemoteSynthesizer and RemoteRecognizer have the interfaces of the in-process
speech.Synthesizer and listen.Recognizer, so the voice host delegates to them with no
change for its boards, and without loading onnxruntime or a Vosk model itself. Both are
called from the voice host's worker threads; each request is its own connection (as
Home Assistant makes them), tried again with backoff while the server is unreachable,
and read with the link's bounded reader, so a bad server cannot take the memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from . import link
from .listen import ListenSettings, Mic
from .speech import Audio, UnknownVoiceError, VoiceInfo

_LOGGER = logging.getLogger(__name__)

_SAMPLE_WIDTH = 2
# Said once at startup to learn the remote voice's sample rate (the speaker is opened
# at it before a story's first sentence is synthesized).
_PROBE_TEXT = "Hello."


def parse_uri(text: str) -> tuple[str, int]:
    """("host", port) from wyoming://HOST:PORT or tcp://HOST:PORT."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("wyoming", "tcp"):
        raise ValueError(f"expected wyoming://HOST:PORT or tcp://HOST:PORT, not {text!r}")
    return link.parse_address(rest)


@dataclass(frozen=True)
class RemoteSettings:
    """How hard a request tries, and how long it waits."""

    retry_seconds: float = 10.0
    """How long one request keeps trying to reach the server before it fails (s)."""
    read_timeout_seconds: float = 30.0
    """Longest wait for the next event of an answer (s)."""
    # wyoming-piper's info lists every voice it could download: 86 KB of data.
    link: link.LinkSettings = field(
        default_factory=lambda: link.LinkSettings(max_data_bytes=1024 * 1024))


class RemoteError(RuntimeError):
    """The server answered with an error event, or not as Wyoming says it should."""


async def _connect(host: str, port: int, settings: RemoteSettings,
                   deadline: float | None) -> link.BoundedTcpClient:
    """A connection, retried with backoff until deadline (time.monotonic(); None: forever)."""
    backoff = settings.link.backoff_seconds
    while True:
        client = link.BoundedTcpClient(host, port, settings.link)
        try:
            await client.connect()
            return client
        except (OSError, asyncio.TimeoutError) as err:
            if deadline is not None and time.monotonic() + backoff > deadline:
                raise ConnectionError(f"cannot reach the Wyoming server at {host}:{port}: "
                                      f"{err!r}") from err
            _LOGGER.info("Cannot reach %s:%d (%r); retrying in %.1f s", host, port, err, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, settings.link.max_backoff_seconds)


async def _next(client: link.BoundedTcpClient, settings: RemoteSettings) -> link.Event:
    try:
        event = await link.within(client.read_event(), settings.read_timeout_seconds)
    except asyncio.TimeoutError:
        raise RemoteError(f"no answer in {settings.read_timeout_seconds:.0f} s") from None
    if event is None:
        raise RemoteError("the server closed the connection")
    if event.type == link.ERROR:
        raise RemoteError(f"the server says: {event.data.get('text')}")
    return event


class _Remote:
    def __init__(self, uri: str, settings: RemoteSettings) -> None:
        self.host, self.port = parse_uri(uri)
        self.uri = uri
        self.remote = settings
        self.info: dict = {}
        """The server's answer to describe (see wyoming.info.Info)."""

    async def _request(self, exchange, forever: bool = False):
        deadline = None if forever else time.monotonic() + self.remote.retry_seconds
        client = await _connect(self.host, self.port, self.remote, deadline)
        try:
            return await exchange(client)
        finally:
            await client.disconnect()

    async def _describe(self, client: link.BoundedTcpClient) -> dict:
        await client.write_event(link.Event("describe"))
        while (event := await _next(client, self.remote)).type != "info":
            pass
        return event.data


class RemoteSynthesizer(_Remote):
    """A Wyoming TTS server used as speech.Synthesizer is; call connect() first."""

    def __init__(self, uri: str, settings: RemoteSettings = RemoteSettings()) -> None:
        super().__init__(uri, settings)
        self.sample_rate = 0
        """Sample rate of the server's default voice (Hz), known after connect()."""
        self.voices: dict[str, VoiceInfo] = {}
        """The voices the server advertises, by name."""

    def connect(self) -> None:
        """Wait (forever, logging) until the server answers; learn its voices and rate."""
        async def setup() -> Audio:
            self.info = await self._request(self._describe, forever=True)
            return await self._request(lambda c: self._speak(c, _PROBE_TEXT, None), forever=True)

        self.sample_rate = asyncio.run(setup()).sample_rate
        # wyoming-piper also lists voices it could download: only installed ones count.
        self.voices = {v["name"]: VoiceInfo(v["name"], tuple(v.get("languages") or ()), None)
                       for program in self.info.get("tts") or ()
                       for v in program.get("voices") or () if v.get("installed", True)}
        _LOGGER.info("TTS by %s: %d voices, %d Hz", self.uri, len(self.voices), self.sample_rate)

    def synthesize(self, text: str, voice: str | None = None) -> Audio:
        """Speak one sentence on the server in voice (None: the server's default)."""
        if voice is not None and self.voices and voice not in self.voices:
            raise UnknownVoiceError(f"{self.uri} has no voice {voice!r}")
        return asyncio.run(self._request(lambda c: self._speak(c, text, voice)))

    async def _speak(self, client: link.BoundedTcpClient, text: str, voice: str | None) -> Audio:
        started = time.perf_counter()
        data: dict = {"text": text}
        if voice is not None:
            data["voice"] = {"name": voice}
        await client.write_event(link.Event(link.SYNTHESIZE, data))
        pcm, rate = bytearray(), 0
        while (event := await _next(client, self.remote)).type != "audio-stop":
            if event.type == "audio-start":
                rate = event.data.get("rate")
                if event.data.get("width") != _SAMPLE_WIDTH or event.data.get("channels") != 1 \
                        or not isinstance(rate, int) or rate <= 0:
                    raise RemoteError(f"audio is not 16-bit mono: {event.data}")
            elif event.type == "audio-chunk" and event.payload:
                pcm += event.payload
        if not rate:
            raise RemoteError("audio-stop without audio-start")
        return Audio(text, bytes(pcm), rate, time.perf_counter() - started)


class RemoteRecognizer(_Remote):
    """A Wyoming ASR server used as listen.Recognizer is: the microphone's audio is
    streamed to it as it is read; call connect() first.

    Unlike Vosk in process, it cannot say when the child has finished speaking, so a
    listen lasts its full time unless the source ends or it is stopped.
    """

    def __init__(self, uri: str, listen: ListenSettings,
                 settings: RemoteSettings = RemoteSettings()) -> None:
        super().__init__(uri, settings)
        self.settings = listen

    def connect(self) -> None:
        """Wait (forever, logging) until the server answers describe."""
        self.info = asyncio.run(self._request(self._describe, forever=True))
        _LOGGER.info("ASR by %s: %s", self.uri,
                     ", ".join(m["name"] for m in self.models()) or "no models advertised")

    def models(self) -> list[dict]:
        """The server's ASR models: [{"name", "languages"}, ...]."""
        return [{"name": m["name"], "languages": list(m.get("languages") or ())}
                for program in self.info.get("asr") or ()
                for m in program.get("models") or ()]

    def listen(self, mic: Mic, seconds: float, stop: threading.Event) -> str:
        """What the server heard in seconds of mic audio (capped by max_seconds)."""
        return asyncio.run(self._request(lambda c: self._transcribe(c, mic, seconds, stop)))

    async def _transcribe(self, client: link.BoundedTcpClient, mic: Mic, seconds: float,
                          stop: threading.Event) -> str:
        rate = mic.sample_rate
        fmt = {"rate": rate, "width": _SAMPLE_WIDTH, "channels": 1}
        chunk = max(1, int(rate * self.settings.chunk_seconds))
        limit = int(rate * min(seconds, self.settings.max_seconds))
        heard = 0
        await client.write_event(link.Event("transcribe", {}))
        await client.write_event(link.Event("audio-start", fmt))
        mic.open()
        try:
            while heard < limit and not stop.is_set():
                data = mic.read(min(chunk, limit - heard))  # blocks this thread's own loop only
                if not data:
                    break
                heard += len(data) // _SAMPLE_WIDTH
                await client.write_event(link.Event("audio-chunk", fmt, data))
        finally:
            mic.close()
        if stop.is_set():
            return ""
        await client.write_event(link.Event("audio-stop", {}))
        while (event := await _next(client, self.remote)).type != link.TRANSCRIPT:
            pass
        text = event.data.get("text")
        if not isinstance(text, str):
            raise RemoteError(f"a transcript without text: {event.data}")
        _LOGGER.info("Transcript from %s after %.1f s of audio: %r", self.uri, heard / rate, text)
        return text
