"""The voice host's standard Wyoming listener, for Home Assistant and any other client.

Opt-in (`storybot voice-host --wyoming tcp://HOST:PORT`) and apart from the board link:
Wyoming has no authentication, so this listener never opens the microphone and never
speaks on the robot's speaker. What it offers, as wyoming-piper and Wyoming ASR servers
do:

    describe                              -> info (TTS voices, ASR models, stories)
    synthesize {text, voice?}             -> audio-start, audio-chunk..., audio-stop
    synthesize-start {voice?}, synthesize-chunk {text}..., synthesize-stop
                                          -> per sentence: audio-start, chunks, audio-stop;
                                             then synthesize-stopped
    transcribe?, audio-start, audio-chunk..., audio-stop
                                          -> transcript {text}   (the client's audio only)
    transcript {text}  (the handle domain) -> handled {text}: a story told by the board,
                                             or not-handled {text} saying why not
    anything refused                      -> error {text, code}

Text is spoken sentence by sentence (robot.sentences), so the first audio follows the
first sentence, not the whole text; each sentence passes the word filter first (the
board's stories already have; a client's text has not). Reading is the link's bounded
reader; there are no pings here (a plain client does not expect them), and a client
silent for idle_seconds is closed instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from wyoming.info import (AsrModel, AsrProgram, Attribution, HandleModel, HandleProgram, Info,
                          TtsProgram, TtsVoice)

from . import __version__, link
from .link import Refused, is_loopback
from .listen import ListenSettings
from .sentences import SentenceBuffer, split_sentences
from .speech import Audio, UnknownVoiceError, VoiceInfo
from .wordfilter import WordFilter

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 10700  # wyoming-piper's and Home Assistant's usual port
_SAMPLE_WIDTH = 2
_RATES = range(8000, 48001)  # what the recognizer is given; Vosk resamples within this
_PIPER = Attribution(name="Piper", url="https://github.com/rhasspy/piper")
_ASR = Attribution(name="storybot voice host", url="https://alphacephei.com/vosk/")
_STORIES = Attribution(name="llama2.c stories15M", url="https://github.com/karpathy/llama2.c")

Synthesize = Callable[[str, "str | None"], Awaitable[Audio]]
"""(text, voice name or None) -> audio: the voice host's shared synthesis."""


@dataclass(frozen=True)
class WyomingSettings:
    host: str = "127.0.0.1"
    """Address to listen on: the one the assistant reaches (Wyoming has no authentication)."""
    port: int = DEFAULT_PORT
    max_text_chars: int = 4000
    """Longest text one synthesize (or one whole stream) may carry (characters)."""
    max_audio_seconds: float = 15.0
    """Longest audio one transcribe may carry (s)."""
    max_connections: int = 8
    """Clients served at once; more are refused with an error."""
    allow: tuple[str, ...] = ()
    """Addresses or networks (CIDR) of the clients served, e.g. Home Assistant's; others
    get an error and are closed. Empty: whoever reaches the address listened on."""
    idle_seconds: float = 60.0
    """A client that sends nothing for this long is closed (s)."""
    chunk_seconds: float = 0.25
    """Audio replies go out in chunks this long (s)."""
    story_board: str | None = None
    """HOST:PORT of the board's control port, to answer transcripts with stories; None:
    no stories here."""
    story_timeout_seconds: float = 300.0
    """Longest a story may take to be told (s)."""
    # Data up to 256 KiB is read, so a text far over max_text_chars still gets its error.
    link: link.LinkSettings = field(
        default_factory=lambda: link.LinkSettings(max_data_bytes=256 * 1024))
    """Framing limits (data and payload sizes) and the write timeout."""


class ClientMic:
    """A client's audio, played into the recognizer as listen.Mic; never a microphone."""

    def __init__(self, pcm: bytes, sample_rate: int) -> None:
        self.pcm, self.sample_rate = pcm, sample_rate
        self._offset = 0

    def open(self) -> None:
        self._offset = 0

    def read(self, frames: int) -> bytes:
        data = self.pcm[self._offset:self._offset + frames * _SAMPLE_WIDTH]
        self._offset += len(data)
        return data

    def close(self) -> None:
        pass



class WyomingServer:
    """The listener: info, synthesis, transcription and stories for Wyoming clients."""

    def __init__(self, settings: WyomingSettings, synthesize: Synthesize,
                 voices: dict[str, VoiceInfo], *, recognizer=None,
                 asr_models: list[dict] | None = None, words: WordFilter | None = None,
                 secret: bytes | None = None) -> None:
        """voices: what synthesize may be asked for; recognizer: a listen.Recognizer (or
        remote.RemoteRecognizer) or None; asr_models: [{"name", "languages"}] to advertise;
        secret: the pairing secret, for a story board that is not on loopback."""
        self.secret = secret
        self.settings = settings
        self.synthesize = synthesize
        self.voices = voices
        self.recognizer = recognizer
        self.asr_models = asr_models or []
        self.words = words or WordFilter.default()
        # One transcription at a time, in a thread of its own: the board's listen has the
        # voice host's recognizer thread to itself.
        self._asr = ThreadPoolExecutor(1, thread_name_prefix="wyoming-asr")
        self.clients = 0
        self._allow = [ipaddress.ip_network(a, strict=False) for a in settings.allow]
        self.server = link.LinkServer(settings.host, settings.port, self._client, settings.link)

    def allowed(self, peer) -> bool:
        if not self._allow:
            return True
        try:
            address = ipaddress.ip_address(peer[0])
        except (TypeError, IndexError, ValueError):
            return False
        # A listener on "::" sees IPv4 clients as ::ffff:a.b.c.d.
        address = getattr(address, "ipv4_mapped", None) or address
        return any(address in network for network in self._allow)

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                session: None) -> _Client:
        # Wyoming has no authentication: no session here (the address allow-list decides)
        return _Client(reader, writer, self)

    async def run(self) -> None:
        try:
            await self.server.run()
        finally:
            await asyncio.to_thread(self._asr.shutdown)

    def info(self) -> link.Event:
        tts = TtsProgram(
            name="storybot-piper", description="Piper voices of the storybot voice host",
            attribution=_PIPER, installed=True, version=__version__,
            supports_synthesize_streaming=True,
            voices=[TtsVoice(name=v.name, description=v.name, attribution=_PIPER,
                             installed=True, version=None, languages=list(v.languages))
                    for v in self.voices.values()])
        info = Info(tts=[tts])
        if self.recognizer is not None:
            info.asr = [AsrProgram(
                name="storybot-asr", description="The storybot voice host's recognizer",
                attribution=_ASR, installed=True, version=__version__,
                models=[AsrModel(name=m["name"], description=m["name"], attribution=_ASR,
                                 installed=True, version=None, languages=m["languages"])
                        for m in self.asr_models])]
        if self.settings.story_board is not None:
            info.handle = [HandleProgram(
                name="storybot-stories", description="Bedtime stories told by the storybot "
                "board: say what the story is about", attribution=_STORIES,
                installed=True, version=__version__,
                models=[HandleModel(name="stories15M", description="TinyStories Llama 2",
                                    attribution=_STORIES, installed=True, version=None,
                                    languages=["en"])])]
        event = info.event()
        return link.Event(event.type, event.data)

    def voice_for(self, requested: object) -> str | None:
        """The voice name a request's `voice` field picks (None: the default)."""
        if requested is None:
            return None
        if not isinstance(requested, dict):
            raise Refused(f"voice must be an object, not {requested!r}", "bad-request")
        name, language = requested.get("name"), requested.get("language")
        if name is not None:
            if name not in self.voices:
                raise Refused(f"no voice {name!r}; installed: {', '.join(self.voices)}",
                              "unknown-voice")
            return name
        if language is not None:
            for voice in self.voices.values():
                if language in voice.languages:
                    return voice.name
            raise Refused(f"no voice speaks {language!r}", "unknown-voice")
        return None

    async def transcribe(self, pcm: bytes, rate: int) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._asr, self.recognizer.listen, ClientMic(pcm, rate),
            self.settings.max_audio_seconds, threading.Event())


class _Client(link.LinkHandler):
    """One Wyoming client: its requests answered in the order they came."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 server: WyomingServer) -> None:
        super().__init__(reader, writer, server.settings.link)
        # plain, bounded events: this listener skips the board link's pings and timeout
        self._plain = link.Stream(reader, writer, server.settings.link)
        self.server = server
        self.settings = server.settings
        self.name = self.link.name
        self._stream: SentenceBuffer | None = None  # a synthesize-start... stream
        self._stream_voice: str | None = None
        self._stream_chars = 0
        self._audio: bytearray | None = None  # a transcription's audio so far
        self._format: dict = {}

    async def run(self) -> None:
        """Like LinkHandler.run, without the board link's pings and dead-peer timeout."""
        self.server.clients += 1
        try:
            if not self.server.allowed(self.writer.get_extra_info("peername")):
                _LOGGER.warning("Refused Wyoming client %s: not in --wyoming-allow", self.name)
                await self._error(Refused("this client is not allowed here", "not-allowed"))
                return
            if self.server.clients > self.settings.max_connections:
                _LOGGER.warning("Refused Wyoming client %s: %d already connected", self.name,
                                self.settings.max_connections)
                await self._error(Refused("too many clients", "busy"))
                return
            _LOGGER.info("Wyoming client %s connected", self.name)
            while True:
                try:
                    event = await link.within(self._plain.read_event(), self.settings.idle_seconds)
                except (asyncio.TimeoutError, OSError):
                    break
                if event is None:
                    break
                try:
                    await self._handle(event)
                except Refused as err:
                    await self._error(err)
                except link.LinkClosed:
                    break
                except Exception as err:  # noqa: BLE001 - one bad request ends no connection
                    _LOGGER.exception("Could not answer %r from %s", event.type, self.name)
                    await self._error(Refused(f"{type(err).__name__}: {err}", "failed"))
        except link.LinkClosed:
            pass
        finally:
            self.server.clients -= 1
            _LOGGER.info("Wyoming client %s gone", self.name)
            self.writer.close()
            self.finished.set()

    async def _error(self, err: Refused) -> None:
        _LOGGER.info("Refused a request of %s: %s (%s)", self.name, err, err.code)
        await self.link.send(link.error_event(str(err), err.code))

    async def _send(self, kind: str, data: dict | None = None,
                    payload: bytes | None = None) -> None:
        await self.link.send(link.Event(kind, data or {}, payload))

    async def _handle(self, event: link.Event) -> None:
        kind, data = event.type, event.data
        if kind == "describe":
            await self.link.send(self.server.info())
        elif kind == "synthesize":
            if self._stream is None:  # within a stream it only repeats the text, for old servers
                await self._synthesize(_text(data, self.settings.max_text_chars),
                                       self.server.voice_for(data.get("voice")))
        elif kind == "synthesize-start":
            voice = self.server.voice_for(data.get("voice"))
            self._stream, self._stream_chars, self._stream_voice = SentenceBuffer(), 0, voice
        elif kind == "synthesize-chunk":
            await self._stream_chunk(data)
        elif kind == "synthesize-stop":
            if self._stream is None:
                raise Refused("synthesize-stop without synthesize-start", "bad-request")
            stream, self._stream = self._stream, None
            for sentence in stream.flush():
                await self._say_once(sentence, self._stream_voice)
            await self._send("synthesize-stopped")
        elif kind == "transcribe":
            if self.server.recognizer is None:
                raise Refused("this voice host has no speech recognizer", "no-asr")
        elif kind.startswith("audio-"):
            await self._take_audio(kind, data, event.payload)
        elif kind == link.TRANSCRIPT:
            await self._story(_text(data, self.settings.max_text_chars))
        elif kind == link.PING:
            await self._send(link.PONG, {"text": data.get("text")})
        else:
            _LOGGER.info("Ignored a %r event from %s", kind, self.name)

    # --- Synthesis ----------------------------------------------------------------------

    async def _synthesize(self, text: str, voice: str | None) -> None:
        """One audio stream for the whole text, its first chunk after the first sentence."""
        rate = None
        for sentence in split_sentences(text):
            audio = await self._speakable(sentence, voice)
            if audio is None:
                continue
            if rate is None:
                rate = audio.sample_rate
                await self._send("audio-start", _format(rate))
            await self._chunks(audio)
        if rate is None:  # nothing to pronounce: still a well-formed, empty answer
            await self._send("audio-start", _format(22050))
        await self._send("audio-stop")

    async def _stream_chunk(self, data: dict) -> None:
        if self._stream is None:
            raise Refused("synthesize-chunk without synthesize-start", "bad-request")
        text = _text(data, self.settings.max_text_chars)
        self._stream_chars += len(text)
        if self._stream_chars > self.settings.max_text_chars:
            self._stream = None
            raise Refused(f"the streamed text is over {self.settings.max_text_chars} "
                          "characters", "too-long")
        for sentence in self._stream.feed(text):
            await self._say_once(sentence, self._stream_voice)

    async def _say_once(self, sentence: str, voice: str | None) -> None:
        """One sentence of a stream as an audio stream of its own (as wyoming-piper does)."""
        audio = await self._speakable(sentence, voice)
        if audio is not None:
            await self._send("audio-start", _format(audio.sample_rate))
            await self._chunks(audio)
            await self._send("audio-stop")

    async def _speakable(self, sentence: str, voice: str | None) -> Audio | None:
        if not self.server.words.is_clean(sentence):
            _LOGGER.info("Held back a sentence from %s: it has a blocked word", self.name)
            return None
        try:
            audio = await self.server.synthesize(sentence, voice)
        except UnknownVoiceError as err:
            raise Refused(str(err), "unknown-voice") from err
        return audio if audio.pcm else None

    async def _chunks(self, audio: Audio) -> None:
        rate = audio.sample_rate
        step = max(1, int(rate * self.settings.chunk_seconds)) * _SAMPLE_WIDTH
        for offset in range(0, len(audio.pcm), step):
            await self._send("audio-chunk", _format(rate), audio.pcm[offset:offset + step])

    # --- Transcription ------------------------------------------------------------------

    async def _take_audio(self, kind: str, data: dict, payload: bytes | None) -> None:
        if kind == "audio-start":
            self._audio = None
            if self.server.recognizer is None:
                raise Refused("this voice host has no speech recognizer", "no-asr")
            fmt = {k: data.get(k) for k in ("rate", "width", "channels")}
            if fmt["width"] != _SAMPLE_WIDTH or fmt["channels"] != 1 \
                    or not isinstance(fmt["rate"], int) or fmt["rate"] not in _RATES:
                raise Refused(f"audio must be 16-bit mono at 8000-48000 Hz, not {fmt}",
                              "bad-audio-format")
            self._audio, self._format = bytearray(), fmt
        elif self._audio is None:
            return  # the rest of audio already refused (or never started)
        elif kind == "audio-chunk":
            if any(data.get(k) != v for k, v in self._format.items()) \
                    or len(payload or b"") % _SAMPLE_WIDTH:
                self._audio = None
                raise Refused("an audio chunk's format differs from its audio-start",
                              "bad-audio-format")
            self._audio += payload or b""
            limit = self.settings.max_audio_seconds * self._format["rate"] * _SAMPLE_WIDTH
            if len(self._audio) > limit:
                self._audio = None
                raise Refused(f"audio over {self.settings.max_audio_seconds:g} s",
                              "too-long")
        elif kind == "audio-stop":
            pcm, self._audio = bytes(self._audio), None
            text = await self.server.transcribe(pcm, self._format["rate"])
            await self._send(link.TRANSCRIPT, {"text": text})

    # --- Stories ------------------------------------------------------------------------

    async def _story(self, prompt: str) -> None:
        """A transcript to handle: the board tells the story (spoken through its voice
        host as always) and the client gets its text."""
        board = self.settings.story_board
        if board is None:
            await self._send("not-handled", {"text": "This voice host tells no stories."})
            return
        host, port = link.parse_address(board)
        # a board's control port off loopback wants the pairing the boards' link uses
        secret = None if is_loopback(host) else self.server.secret
        client = None
        sentences: list[str] = []
        problem: list[str] = []

        async def handle(event: link.Event) -> bool:
            if event.type == link.STORY_SENTENCE:
                sentences.append(event.data["text"])
            elif event.type == link.STORY_END:
                return False
            elif event.type == link.ERROR:
                problem.append(event.data["text"])
                return False
            return True

        try:
            client, conn = await link.open_link(host, port, self.settings.link, secret,
                                                f"board {board}")
            await conn.send(link.Event(link.STORY_REQUEST, {"text": prompt}))
            await link.within(conn.run(handle), self.settings.story_timeout_seconds)
        except (OSError, asyncio.TimeoutError) as err:
            problem.append(f"the story teller is not reachable ({err!r})")
        finally:
            if client is not None:
                await client.disconnect()
        if sentences and not problem:
            await self._send("handled", {"text": " ".join(sentences)})
        else:
            why = problem[0] if problem else "the board told no story"
            _LOGGER.info("No story for %s: %s", self.name, why)
            await self._send("not-handled", {"text": f"No story now: {why}."})


def _text(data: dict, limit: int) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise Refused(f"text must be a string, not {text!r}", "bad-request")
    if len(text) > limit:
        raise Refused(f"text is {len(text)} characters long, over {limit}", "too-long")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise Refused(f"text is not valid Unicode ({err.reason})", "bad-request") from err
    return text


def _format(rate: int) -> dict:
    return {"rate": rate, "width": _SAMPLE_WIDTH, "channels": 1}


# --- The voice host's command line ----------------------------------------------------------


def add_arguments(parser) -> None:
    """The voice-host flags for this listener and for delegating speech."""
    env = os.environ.get
    parser.add_argument("--wyoming", default=env("STORYBOT_WYOMING"),
                        help="also serve Home Assistant and other Wyoming clients at "
                             "tcp://HOST:PORT (no authentication: bind it to the address "
                             "the assistant uses) [STORYBOT_WYOMING] (default: off)")
    parser.add_argument("--wyoming-allow", action="append",
                        default=env("STORYBOT_WYOMING_ALLOW", "").split(),
                        help="serve only this client address or network on --wyoming, e.g. "
                             "Home Assistant's (repeatable) [STORYBOT_WYOMING_ALLOW, "
                             "space-separated] (default: any client)")
    parser.add_argument("--stories", default=env("STORYBOT_STORIES"),
                        help="the board's control HOST:PORT, to answer Wyoming transcripts "
                             "with its stories [STORYBOT_STORIES] (default: no stories)")
    parser.add_argument("--voice-dir", action="append", default=[],
                        help="a folder of further Piper voices clients may ask for "
                             "(repeatable)")
    parser.add_argument("--tts", default=env("STORYBOT_TTS"),
                        help="speak with a Wyoming TTS server at wyoming://HOST:PORT instead "
                             "of Piper in process [STORYBOT_TTS] (default: Piper here)")
    parser.add_argument("--asr", default=env("STORYBOT_ASR"),
                        help="hear with a Wyoming ASR server at wyoming://HOST:PORT instead "
                             "of Vosk in process [STORYBOT_ASR] (default: --vosk-model here)")


def speech_from_args(args, listen: ListenSettings):
    """(synthesizer, recognizer or None): in process, or delegated to Wyoming servers."""
    from .listen import open_recognizer
    from .remote import RemoteRecognizer, RemoteSynthesizer
    from .speech import Synthesizer

    if args.tts:
        synth = RemoteSynthesizer(args.tts)
        synth.connect()
    else:
        synth = Synthesizer(args.voice, voice_dirs=args.voice_dir)
    if args.asr:
        recognizer = RemoteRecognizer(args.asr, listen)
        recognizer.connect()
    else:
        recognizer = open_recognizer(listen)
    return synth, recognizer


def asr_models(recognizer) -> list[dict]:
    """What a recognizer can tell about its models: [{"name", "languages"}]."""
    if recognizer is None:
        return []
    if hasattr(recognizer, "models"):  # a remote one says what its server said
        return recognizer.models()
    name = recognizer.settings.vosk_model
    if name is None:  # pocketsphinx with its packaged US English model
        return [{"name": "pocketsphinx-en-us", "languages": ["en"]}]
    # Vosk models carry no language field; their names do (vosk-model-small-en-us-0.15).
    found = re.search(r"(?:^|-)([a-z]{2})(?:-[a-z]{2})?(?:-|$)",
                      Path(name).name.removeprefix("vosk-model-").removeprefix("small-"))
    return [{"name": Path(name).name, "languages": [found.group(1)] if found else []}]


def from_args(args, host) -> WyomingServer | None:
    """The listener --wyoming asks for, speaking through host (a VoiceHost); or None."""
    if not args.wyoming:
        return None
    address, port = link.parse_address(args.wyoming.removeprefix("tcp://"))
    return WyomingServer(
        WyomingSettings(host=address, port=port, story_board=args.stories,
                        allow=tuple(args.wyoming_allow)),
        lambda text, voice: host.synthesize(text, voice=voice), host.synth.voices,
        recognizer=host.recognizer, asr_models=asr_models(host.recognizer),
        secret=host.secret or None)
