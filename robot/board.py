"""The board daemon (storybot serve): button, prompts and story engine in one state machine.

    idle --press--> listening --transcript--> telling --story spoken--> idle
     |                 | timeout, press, no voice host: surprise story     ^
     +--long press, typed prompt (storybot ask)--> telling --press: stop---+

Every input (button, voice host, typed prompt, timers, the story itself) lands in one
queue, and one task takes them in turn, so the state only ever changes in one place.
The engine runs in a worker thread (its calls release the GIL) through robot.story,
which hands out whole sentences that pass the word filter; each goes to the voice host
as soon as it is complete, at most ``window`` ahead of what the host has spoken.
"""

from __future__ import annotations

import sys

# The board speaks plain TCP to its voice host, never TLS, but asyncio imports the ssl
# module when it can, and with it libssl and libcrypto: about 3.4 MiB of the daemon's
# resident memory, on a board with 38 MB free. Keep it out (where nothing imported it
# before).
sys.modules.setdefault("ssl", None)

import argparse
import asyncio
import enum
import logging
import os
import threading
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import link, seal
from .button import ButtonEvent, ButtonSettings, ButtonWatcher, Line
from .engine import Engine, Params
from .link import Event, is_loopback
from .prompts import Shaped, describe, shape_prompt
from .story import Story, StorySettings
from .wordfilter import WordFilter

_LOGGER = logging.getLogger(__name__)

DEFAULT_CONTROL_PORT = 10721
# --kv-cache: Params.kv_fp16 (auto leaves the choice to the library)
KV_CACHE = {"auto": None, "fp16": True, "fp32": False}

_END = None  # closes a story's sentence queue


class State(enum.Enum):
    IDLE = "idle"
    LISTENING = "listening"
    TELLING = "telling"


@dataclass(frozen=True)
class BoardSettings:
    """What the board connects to and how it tells."""

    voice_host: str | None = None
    """HOST:PORT of the voice host; None: no voice, stories only go to the log."""
    control: str | None = f"127.0.0.1:{DEFAULT_CONTROL_PORT}"
    """HOST:PORT to take typed prompts on (storybot ask); None: no control port."""
    listen_seconds: float = 8.0
    """How long the voice host listens for a spoken prompt (s)."""
    listen_grace_seconds: float = 4.0
    """Further wait for the transcript before telling a surprise story (s)."""
    window: int = 4
    """Sentences sent to the voice host and not yet spoken (count): enough to keep the
    speaker busy, few enough that a stop wastes little."""
    voice_timeout_seconds: float = 60.0
    """Longest wait for the voice host to speak the next sentence (s); a host that is
    connected but stuck then gets the story stopped, as a lost one would."""
    steps: int = 256
    """Positions per story, opening included (tokens)."""
    temperature: float = 1.0
    """Sampling temperature."""
    topp: float = 0.9
    """Nucleus sampling mass."""
    seed: int = 0
    """Sampling seed; 0 takes the clock for each story."""
    story: StorySettings = field(default_factory=StorySettings)
    """How long a story grows and how its sentences are cut."""
    button: ButtonSettings = field(default_factory=ButtonSettings)
    link: link.LinkSettings = field(default_factory=link.LinkSettings)


@dataclass(eq=False)
class Telling:
    """One story being told, from its opening to its last spoken sentence."""

    id: int
    shaped: Shaped
    to_voice: bool
    """Sentences go to the voice host (it was connected when the story began)."""
    prompt: str | None = None
    """What was said (the transcript) or typed; None when nobody asked for anything."""
    asker: link.Link | None = None
    """The storybot ask connection that asked for it, which gets the sentences too."""
    sentences: list[str] = field(default_factory=list)
    """Sentences sent, in order."""
    blocked: int = 0
    """Sentences the word filter held back (known once generation is over)."""
    stopped: str | None = None
    """Why the story was cut short, if it was."""
    failed: str | None = None
    """Why generation failed, if it did (the asker gets an error, not a story-end)."""
    number: int = 0
    """The engine's number for it (Engine.new_story): a stop names it, so a stop that
    comes before generation starts is not lost."""
    in_flight: int = 0
    voice_done: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on anything a waiting sender cares about: a sentence spoken, done, stopped."""
    generated: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Sentences from the worker thread, then _END."""
    task: asyncio.Task | None = None


def _readable(word: str) -> bool:
    # stories15M knows English only; a word with no Latin letter (another script, as
    # the Korean test model hears) would make its opening nonsense.
    return any(c.isascii() and c.isalpha() for c in word)


class Board:
    """The state machine and the tasks that feed it."""

    def __init__(self, settings: BoardSettings, engine: Engine, *,
                 words: WordFilter | None = None, line: Line | None = None,
                 secret: bytes | None = None) -> None:
        """secret: the pairing secret (robot.seal) the voice host and a control port off
        loopback require; without it the board tells its stories to the log only."""
        self.settings = settings
        self.engine = engine
        self.words = words or WordFilter.default()
        self.state = State.IDLE
        self.story: Telling | None = None
        """The story being told, or the last one told."""
        self.ready = asyncio.Event()
        self._inbox: asyncio.Queue[tuple] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listen_id = 0
        self._listen_timer: asyncio.TimerHandle | None = None
        self._story_id = 0
        self._voice: link.LinkClient | None = None
        if settings.voice_host and not secret:
            _LOGGER.warning("Not paired with a voice host: stories go to the log. Pair with "
                            "`storybot pair --code CODE` (the code `storybot pair` prints on "
                            "the voice host), then restart")
        elif settings.voice_host:
            host, port = link.parse_address(settings.voice_host)
            self._voice = link.LinkClient(host, port, self._from_voice, settings.link,
                                          on_down=self._voice_down, secret=secret)
        self._control: link.LinkServer | None = None
        if settings.control:
            host, port = link.parse_address(settings.control)
            # On loopback the asker is on the board already; anywhere else it must pair.
            sealed = not is_loopback(host)
            if sealed and not secret:
                _LOGGER.error("The control port %s is not on loopback and the board is not "
                              "paired: it stays closed", settings.control)
            else:
                self._control = link.LinkServer(host, port, self._control_session,
                                                settings.link, secret if sealed else None)
        self._handlers = {
            "button": self._on_button, "listen-timeout": self._on_listen_timeout,
            "voice": self._on_voice, "voice-down": self._on_voice_down,
            "request": self._on_request, "told": self._on_told,
        }
        self._button: ButtonWatcher | None = None
        if line is not None or settings.button.enabled:
            self._button = ButtonWatcher(settings.button, self.press, line)

    # --- Inputs: each only queues what happened --------------------------------------

    def press(self, event: ButtonEvent) -> None:
        """A button event, from any thread."""
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, ("button", event))

    async def _from_voice(self, event: Event) -> bool:
        self._inbox.put_nowait(("voice", event))
        return True

    async def _voice_down(self) -> None:
        self._inbox.put_nowait(("voice-down",))

    def request(self, text: str, asker: link.Link) -> None:
        """A typed prompt from a control connection."""
        self._inbox.put_nowait(("request", text, asker))

    def _control_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         session: seal.Session | None) -> _ControlSession:
        return _ControlSession(reader, writer, self, session)

    # --- The machine ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled; a story being told is stopped on the way out."""
        self._loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._machine(), name="board")]
        if self._voice is not None:
            tasks.append(asyncio.create_task(self._voice.run(), name="voice link"))
        if self._control is not None:
            tasks.append(asyncio.create_task(self._control.run(), name="control"))
        try:
            if self._control is not None:
                await self._control.listening.wait()
            if self._button is not None:
                self._button.start()
            self.ready.set()
            # Not gather: cancelling a gather cancels its tasks at once, and the control
            # port must stay open until the asker has heard that the story ended.
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            if self._button is not None:
                await asyncio.to_thread(self._button.stop)
            tasks[0].cancel()  # the machine first, so nothing new starts
            await asyncio.gather(tasks[0], return_exceptions=True)
            await self._stop_story("the board is shutting down")
            if self.story is not None and self.story.task is not None:
                await asyncio.gather(self.story.task, return_exceptions=True)
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)

    async def _machine(self) -> None:
        while True:
            kind, *args = await self._inbox.get()
            try:
                await self._handlers[kind](*args)
            except Exception:
                _LOGGER.exception("Failed to handle %s while %s", kind, self.state.value)
            finally:
                self._inbox.task_done()

    async def settled(self) -> None:
        """Until every input queued so far (and since) has been handled."""
        await asyncio.sleep(0)  # a press from this thread is queued by call_soon
        await self._inbox.join()

    def _set_state(self, state: State) -> None:
        if state is not self.state:
            _LOGGER.info("State: %s -> %s", self.state.value, state.value)
            self.state = state

    async def _on_button(self, event: ButtonEvent) -> None:
        if self.state is State.TELLING:
            await self._stop_story("the button was pressed")
        elif self.state is State.LISTENING:
            self._begin(self._surprise(), why="the button was pressed while listening")
        elif event is ButtonEvent.LONG_PRESS:
            self._begin(self._surprise(), why="long press")
        else:
            await self._start_listening()

    async def _start_listening(self) -> None:
        self._listen_id += 1
        try:
            if self._voice is None:
                raise link.LinkClosed("no voice host is configured")
            await self._voice.send(Event(link.LISTEN, {
                "listen": self._listen_id, "seconds": self.settings.listen_seconds}))
        except link.LinkClosed as err:
            self._begin(self._surprise(), why=f"nobody can listen ({err})")
            return
        self._set_state(State.LISTENING)
        self._listen_timer = self._loop.call_later(
            self.settings.listen_seconds + self.settings.listen_grace_seconds,
            self._inbox.put_nowait, ("listen-timeout", self._listen_id))

    async def _on_listen_timeout(self, listen_id: int) -> None:
        if self.state is State.LISTENING and listen_id == self._listen_id:
            self._begin(self._surprise(), why="no transcript in time")

    async def _on_voice(self, event: Event) -> None:
        kind, data = event.type, event.data
        story = self.story if self.state is State.TELLING else None
        if kind == link.TRANSCRIPT and self.state is State.LISTENING \
                and data["listen"] == self._listen_id:
            _LOGGER.info("Heard %r (recognizer confidence %s)", data["text"], data.get("confidence"))
            self._begin(self._from_transcript(data["text"]), why="a spoken prompt",
                        prompt=data["text"])
        elif kind == link.STORY_SPOKEN and story is not None and data["story"] == story.id:
            story.in_flight -= 1
            story.changed.set()
        elif kind == link.STORY_DONE and story is not None and data["story"] == story.id:
            story.voice_done = True
            story.changed.set()
        elif kind == link.ERROR:
            _LOGGER.warning("The voice host reports: %s", data["text"])
            if story is not None and data.get("story") == story.id:
                story.in_flight -= 1  # a sentence it will not speak
                story.changed.set()
            elif self.state is State.LISTENING and data.get("listen") == self._listen_id:
                self._begin(self._surprise(), why="the voice host cannot listen")
        else:
            _LOGGER.warning("Dropped a %r event from the voice host while %s (stale or "
                            "out of order): %s", kind, self.state.value, data)

    async def _on_voice_down(self) -> None:
        if self.state is State.LISTENING:
            _LOGGER.warning("The voice host went away while listening")
            self._set_state(State.IDLE)
        elif self.state is State.TELLING and self.story.to_voice:
            self.story.to_voice = False  # nobody to tell story-stop to
            await self._stop_story("the voice host went away")

    async def _on_request(self, text: str, asker: link.Link) -> None:
        if self.state is State.TELLING:
            await _send_or_forget(asker, link.error_event(f"busy telling story {self.story.id}",
                                                          "busy"))
            return
        try:
            shaped = shape_prompt(text, seed=self._story_id + 1)
        except Exception as err:
            _LOGGER.exception("A typed prompt could not be shaped")
            await _send_or_forget(asker, link.error_event(f"bad prompt: {err}", "bad-prompt"))
            return
        self._begin(shaped, why="a typed prompt", asker=asker, prompt=text)

    async def _on_told(self, story: Telling) -> None:
        if story is self.story:
            _LOGGER.info("Story %d over: %d sentences sent, %d blocked%s", story.id,
                         len(story.sentences), story.blocked,
                         f", stopped: {story.stopped}" if story.stopped else "")
            self._set_state(State.IDLE)

    # --- Telling ----------------------------------------------------------------------

    def _surprise(self) -> Shaped:
        return shape_prompt("", seed=self._story_id + 1)

    def _from_transcript(self, text: str) -> Shaped:
        cleaned = self.words.clean_transcript(text)
        readable = " ".join(w for w in cleaned.split() if _readable(w))
        if readable != cleaned:
            _LOGGER.info("Dropped %d transcript words the story model cannot read",
                         len(cleaned.split()) - len(readable.split()))
        return shape_prompt(readable, seed=self._story_id + 1, spoken=True)

    def _begin(self, shaped: Shaped, why: str, asker: link.Link | None = None,
               prompt: str | None = None) -> None:
        if self._listen_timer is not None:
            self._listen_timer.cancel()
            self._listen_timer = None
        self._story_id += 1
        voice = self._voice is not None and self._voice.link is not None
        story = Telling(self._story_id, shaped, to_voice=voice, prompt=prompt, asker=asker,
                        number=self.engine.new_story())
        _LOGGER.info("Story %d (%s): %s%s", story.id, why, describe(shaped),
                     "" if voice else "; no voice host, the story goes to the log")
        self.story = story
        self._set_state(State.TELLING)
        story.task = asyncio.create_task(self._tell(story), name=f"story {story.id}")

    async def _stop_story(self, why: str) -> None:
        story = self.story
        if story is None or story.stopped or self.state is not State.TELLING:
            return
        _LOGGER.info("Stopping story %d: %s", story.id, why)
        story.stopped = why
        self.engine.stop(story.number)
        story.changed.set()
        if story.to_voice:
            try:
                await self._voice.send(Event(link.STORY_STOP, {"story": story.id}))
            except link.LinkClosed as err:
                _LOGGER.info("Could not tell the voice host to stop: %s", err)

    async def _tell(self, story: Telling) -> None:
        worker = threading.Thread(target=self._generate,
                                  args=(story, asyncio.get_running_loop()),
                                  name=f"story-{story.id}")
        generated = False
        try:
            # The opening may be typed text: what goes out passes the word filter.
            await self._announce(story, Event(link.STORY_START, {
                "story": story.id, "opening": self.words.clean_transcript(story.shaped.opening),
                "source": story.shaped.source}))
            worker.start()
            while (sentence := await story.generated.get()) is not _END:
                if story.stopped:
                    continue  # let the worker wind down; nothing more is said
                await self._wait(story, lambda: story.in_flight < self.settings.window)
                if story.stopped:
                    continue
                story.in_flight += 1
                await self._announce(story, Event(link.STORY_SENTENCE, {
                    "story": story.id, "index": len(story.sentences), "text": sentence}))
                story.sentences.append(sentence)
                _LOGGER.info("Story %d, sentence %d: %s", story.id, len(story.sentences),
                             sentence)
            generated = True
            end = {"story": story.id, "sentences": len(story.sentences)}
            if story.stopped:
                end["stopped"] = story.stopped
            else:
                await self._announce(story, Event(link.STORY_END, end))
                await self._wait(story, lambda: story.voice_done)
            if story.asker is not None:
                await _send_or_forget(story.asker, Event(link.STORY_END, end) if not story.failed
                                      else link.error_event(story.failed, "failed"))
        finally:
            if worker.is_alive() and not generated:
                story.stopped = story.stopped or "cancelled"
                self.engine.stop(story.number)
            while worker.is_alive():  # a token takes milliseconds; ending takes less
                await asyncio.sleep(0.01)
            self._inbox.put_nowait(("told", story))

    async def _wait(self, story: Telling, done) -> None:
        """Until done() holds, the voice host is gone, or the story is stopped."""
        while story.to_voice and not story.stopped and not done():
            story.changed.clear()
            try:
                await link.within(story.changed.wait(), self.settings.voice_timeout_seconds)
            except asyncio.TimeoutError:
                await self._stop_story("the voice host stopped answering")

    async def _announce(self, story: Telling, event: Event) -> None:
        """Send to the voice host (and the asker, if any)."""
        if story.to_voice:
            try:
                await self._voice.send(event)
            except link.LinkClosed as err:
                _LOGGER.warning("Story %d lost its voice: %s", story.id, err)
                story.to_voice = False
                await self._stop_story("the voice host went away")
        if story.asker is not None and event.type != link.STORY_END:
            await _send_or_forget(story.asker, event)

    def _generate(self, story: Telling, loop: asyncio.AbstractEventLoop) -> None:
        """The worker thread: the story's whole, clean sentences -> its queue."""
        def put(item: str | None) -> None:
            loop.call_soon_threadsafe(story.generated.put_nowait, item)

        settings = self.settings
        params = replace(self.engine.params, temperature=settings.temperature,
                         topp=settings.topp, seed=settings.seed, steps=settings.steps)
        text = Story(self.engine, story.shaped.opening, params, settings.story,
                     word_filter=self.words, story=story.number)
        try:
            with closing(text.sentences()) as sentences:
                for sentence in sentences:
                    put(sentence)
            story.blocked = text.stats.blocked
            _LOGGER.info("Story %d generated: %d tokens, ended by %s", story.id,
                         text.stats.tokens, text.stats.finish_reason or "a stop")
        except Exception as err:
            _LOGGER.exception("Story %d: generation failed", story.id)
            story.failed = f"story {story.id} failed: {err}"
        finally:
            put(_END)


async def _send_or_forget(peer: link.Link, event: Event) -> None:
    # An asker who hung up does not stop the story; the child is still listening.
    try:
        await peer.send(event)
    except link.LinkClosed:
        pass


class _ControlSession(link.LinkHandler):
    """A storybot ask connection: typed prompts in, the story's events back out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 board: Board, session: seal.Session | None) -> None:
        super().__init__(reader, writer, board.settings.link, session)
        self._board = board

    async def handle_event(self, event: Event) -> bool:
        if event.type == link.STORY_REQUEST:
            self._board.request(event.data["text"], self.link)
        else:
            _LOGGER.warning("Dropped a %r event on the control port", event.type)
        return True


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="run the board: button, prompts, stories to the voice host",
        description="The board daemon. Flags default to the STORYBOT_* environment "
                    "variables shown, as set by systemd/storybot.env.")
    env = os.environ.get
    p.add_argument("--voice-host", default=env("STORYBOT_VOICE_HOST"),
                   help="HOST:PORT of the voice host [STORYBOT_VOICE_HOST] "
                        "(default: none, stories go to the log)")
    p.add_argument("--control", default=env("STORYBOT_CONTROL",
                                             f"127.0.0.1:{DEFAULT_CONTROL_PORT}"),
                   help="HOST:PORT for typed prompts, or '' for none [STORYBOT_CONTROL] "
                        "(default: %(default)s)")
    p.add_argument("--model", default=env("STORYBOT_MODEL", "stories15M.bin"),
                   help="model file or name [STORYBOT_MODEL] (default: %(default)s)")
    p.add_argument("--tokenizer", default=env("STORYBOT_TOKENIZER", "tokenizer.bin"),
                   help="tokenizer file or name [STORYBOT_TOKENIZER] (default: %(default)s)")
    p.add_argument("--steps", type=int, default=env("STORYBOT_STEPS", "256"),
                   help="positions per story [STORYBOT_STEPS] (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=env("STORYBOT_TEMPERATURE", "1.0"),
                   help="sampling temperature [STORYBOT_TEMPERATURE] (default: %(default)s)")
    p.add_argument("--kv-cache", choices=list(KV_CACHE), default=env("STORYBOT_KV_CACHE", "auto"),
                   help="the attention cache's precision [STORYBOT_KV_CACHE] (default: "
                        "%(default)s: fp16 for a quantized model where the CPU converts "
                        "halves in vector instructions, as the Duo's C906 does, else fp32)")
    p.add_argument("--listen-seconds", type=float, default=env("STORYBOT_LISTEN_SECONDS", "8"),
                   help="how long to listen for a prompt [STORYBOT_LISTEN_SECONDS] "
                        "(default: %(default)s)")
    p.add_argument("--button", default=env("STORYBOT_BUTTON", "auto"),
                   choices=["auto", "gpiod", "sysfs", "none"],
                   help="button backend [STORYBOT_BUTTON] (default: %(default)s)")
    p.add_argument("--button-line", type=int, default=env("STORYBOT_BUTTON_LINE"),
                   help="GPIO line offset (gpiod) or number (sysfs) [STORYBOT_BUTTON_LINE] "
                        "(default: no button)")
    p.add_argument("--button-chip", default=env("STORYBOT_BUTTON_CHIP", "/dev/gpiochip0"),
                   help="GPIO chip device [STORYBOT_BUTTON_CHIP] (default: %(default)s)")
    p.add_argument("--sysfs-root", default=env("STORYBOT_SYSFS_GPIO", "/sys/class/gpio"),
                   help="sysfs GPIO root [STORYBOT_SYSFS_GPIO] (default: %(default)s)")
    p.add_argument("--active-high", action="store_true",
                   default=env("STORYBOT_BUTTON_ACTIVE_HIGH", "") == "1",
                   help="the line reads 1 while pressed [STORYBOT_BUTTON_ACTIVE_HIGH=1] "
                        "(default: active low, a button to ground)")
    p.add_argument("--bias", choices=["pull-up", "pull-down", "none"],
                   default=env("STORYBOT_BUTTON_BIAS"),
                   help="the button line's bias, gpiod only [STORYBOT_BUTTON_BIAS] "
                        "(default: pull-up when active low, pull-down when active high)")
    p.add_argument("--pairing", default=str(seal.default_path()),
                   help="the pairing secret shared with the voice host, made by storybot "
                        "pair [STORYBOT_PAIRING] (default: %(default)s)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import models, service

    settings = BoardSettings(
        voice_host=args.voice_host or None, control=args.control or None,
        listen_seconds=args.listen_seconds, steps=args.steps, temperature=args.temperature,
        seed=0, button=ButtonSettings(
            backend=args.button, line=args.button_line, chip=args.button_chip,
            sysfs_root=args.sysfs_root, active_low=not args.active_high,
            bias=args.bias))
    try:
        secret = seal.load(Path(args.pairing))
    except seal.NotPaired:
        secret = None  # Board says what that means
    engine = Engine(models.find(args.model), models.find(args.tokenizer),
                    Params(kv_fp16=KV_CACHE[args.kv_cache]))
    cache = "fp16" if engine.info.kv_fp16 else "fp32"

    async def main() -> None:
        board = Board(settings, engine, secret=secret)
        await service.serve(board.run(), board.ready,
                            f"{args.model} ({engine.info.format}, KV cache {cache}), "
                            f"voice host {settings.voice_host or 'none'}, "
                            f"control {settings.control or 'none'}")

    try:
        return service.run(main, "board")
    finally:
        engine.close()
