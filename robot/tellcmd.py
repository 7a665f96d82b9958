"""`storybot tell`: generate a story and speak it as it is written, timing each stage."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from . import models
from .wordfilter import WordFilter

_LOGGER = logging.getLogger(__name__)

DEFAULT_FALLBACK_WAV = "story.wav"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the tell subcommand; its heavy imports wait until it runs."""
    p = subparsers.add_parser(
        "tell",
        help="generate a story and speak it, sentence by sentence, as it is written",
        description="Generate a story and speak it: the first sentence plays as soon as it "
        "is complete while the next ones are generated. At a terminal each sentence is "
        "shown as it is spoken. Timing goes to the log and one summary line to stderr at "
        "the end. Ctrl-C stops cleanly.",
    )
    opening = p.add_mutually_exclusive_group()
    opening.add_argument("prompt", nargs="?", default=None,
                         help="the story's opening, used as typed (default: none, a "
                              "surprise story)")
    opening.add_argument("--voice-request", metavar="TEXT", default=None,
                         help="what a child asked for, e.g. 'tell me a story about a "
                              "turtle': filtered and shaped into an opening, shown on stderr")
    p.add_argument("-m", "--model", default=models.DEFAULT_MODEL,
                   help="model file or name, any format the engine loads (default: %(default)s)")
    p.add_argument("-z", "--tokenizer", default=models.DEFAULT_TOKENIZER,
                   help="tokenizer file or name (default: %(default)s)")
    p.add_argument("-s", "--seed", type=int, default=0,
                   help="random seed; 0 = the clock, logged so a story can be told again "
                        "(default: %(default)s)")
    p.add_argument("-t", "--temperature", type=float, default=1.0,
                   help="temperature in [0, inf); 0 = greedy (default: %(default)s)")
    p.add_argument("-p", "--top-p", dest="topp", type=float, default=0.9,
                   help="top-p in [0, 1] (default: %(default)s)")
    p.add_argument("-n", "--steps", type=int, default=256,
                   help="positions per context, prompt included; 0 = the model's context "
                        "(default: %(default)s)")
    p.add_argument("-k", "--kernels", choices=["auto", "generic"], default="auto",
                   help="kernel set (default: %(default)s)")
    p.add_argument("--contexts", type=int, default=None, metavar="N",
                   help="contexts the story may span: when one is full, the next starts "
                        "from the last sentences (default: 1, or as many as --max-words needs)")
    p.add_argument("--max-words", type=int, default=0, metavar="W",
                   help="end the story with the sentence that reaches W words; 0 = no "
                        "limit (default: %(default)s)")
    p.add_argument("--blocked-words", metavar="FILE", default=None,
                   help="word list of sentences never to speak (default: the shipped "
                        "robot/data/blocked_words.txt)")
    p.add_argument("--voice", default=None,
                   help="Piper voice .onnx (with its .onnx.json) (default: the joe voice)")
    p.add_argument("--speed", "--length-scale", dest="length_scale", type=float,
                   default=None, metavar="SCALE",
                   help="Piper length scale: above 1 speaks slower, below 1 faster "
                        "(default: the voice's own)")
    p.add_argument("-o", "--output", default="speaker", metavar="speaker|FILE.wav|-",
                   help="the speaker, a WAV file, or - for raw s16le mono PCM on stdout; "
                        f"without a sound device the speaker becomes {DEFAULT_FALLBACK_WAV} "
                        "(default: %(default)s)")
    p.add_argument("--device", default=None, metavar="NAME|INDEX",
                   help="output device for the speaker: index or part of its name "
                        "(default: the system's)")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--print", dest="print_text", action="store_true",
                       help="print each sentence as it is spoken, a line each, to stdout "
                            "(stderr with --output -) even when that is not a terminal "
                            "(default: only at a terminal)")
    shown.add_argument("--quiet", action="store_true",
                       help="print no sentences, even at a terminal")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the timing report as JSON")
    p.set_defaults(func=cmd_tell)


def cmd_tell(args: argparse.Namespace) -> int:
    from .engine import Engine, Params
    from .speech import Synthesizer
    from .story import Story, StorySettings
    from .tell import TellSettings, tell

    if args.device is not None and args.output != "speaker":
        raise ValueError("--device is for --output speaker only")
    contexts = args.contexts if args.contexts is not None else (0 if args.max_words else 1)
    tell_settings = TellSettings()
    settings = StorySettings(contexts=contexts, max_words=args.max_words,
                             max_sentence_chars=tell_settings.max_sentence_chars)
    words = (WordFilter.from_file(args.blocked_words) if args.blocked_words
             else WordFilter.default())
    # Resolved here rather than in the engine so that the log can say which story this was.
    seed = args.seed or int(time.time()) & 0xFFFFFFFF
    _LOGGER.info("Seed %d", seed)
    prompt = args.prompt
    if args.voice_request is not None:
        prompt = request_opening(args.voice_request, words, seed)
        print(f"opening: {prompt}", file=sys.stderr, flush=True)

    params = Params(temperature=args.temperature, topp=args.topp, seed=seed,
                    steps=args.steps, kernels=args.kernels)
    model = models.find(args.model)
    engine = Engine(model, models.find(args.tokenizer), params)
    synth = Synthesizer(args.voice, length_scale=args.length_scale)
    sink = _make_sink(args.output, args.device)
    story = Story(engine, prompt, params, settings, word_filter=words)

    cancel = threading.Event()
    with _cancel_on_sigint(cancel):
        report = tell(story, synth, sink, settings=tell_settings, cancel=cancel,
                      on_sentence=_sentence_printer(args))
    stats = story.stats
    print(f"{report.summary_line()}; story: {stats.words} words, {stats.contexts} context(s), "
          f"ended by {stats.finish_reason or 'cancel'}", file=sys.stderr)
    if args.json:
        data = json.loads(report.to_json())
        data["story"] = asdict(stats)
        data["request"] = {
            "prompt": prompt, "seed": seed, "temperature": args.temperature,
            "topp": args.topp, "steps": args.steps, "contexts": contexts,
            "max_words": args.max_words, "model": str(model), "voice": str(synth.voice_path),
        }
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 130 if report.cancelled else 0


def request_opening(request: str, words: WordFilter, seed: int) -> str:
    """The story opening for what a child asked: blocked words go, then it is shaped
    (an opening such as "Once upon a time" passes through unchanged)."""
    from .prompts import shape_prompt

    return shape_prompt(words.clean_transcript(request), seed=seed).opening


def _sentence_printer(args: argparse.Namespace):
    """What prints each sentence as it starts playing, or None: at a terminal (the
    parent reads along) or with --print, never with --quiet."""
    text_out = sys.stderr if args.output == "-" else sys.stdout
    if args.quiet or not (args.print_text or text_out.isatty()):
        return None
    # A line a sentence, so that log lines on the same terminal do not split one.
    return functools.partial(print, file=text_out, flush=True)


def _make_sink(output: str, device: str | None):
    from .audio import RawSink, WavSink, default_sink

    if output == "speaker":
        return default_sink(DEFAULT_FALLBACK_WAV, device)
    if output == "-":
        return RawSink()
    return WavSink(output)


@contextlib.contextmanager
def _cancel_on_sigint(cancel: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets cancel, so tell() winds down and drops half-written audio;
    a second one raises KeyboardInterrupt as usual."""

    def on_sigint(signum: int, frame: Any) -> None:
        _LOGGER.info("Interrupted: stopping the story")
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
