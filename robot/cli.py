"""The storybot command: one subcommand per job of the robot."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from . import __version__, models

_LOGGER = logging.getLogger(__name__)


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """The reference run.c's flags, with its defaults."""
    p.add_argument("-t", dest="temperature", type=float, default=1.0,
                   help="temperature in [0, inf); 0 = greedy (default: %(default)s)")
    p.add_argument("-p", dest="topp", type=float, default=0.9,
                   help="top-p in [0, 1] (default: %(default)s)")
    p.add_argument("-s", dest="seed", type=int, default=0,
                   help="random seed; 0 = the clock (default: %(default)s)")
    p.add_argument("-n", dest="steps", type=int, default=256,
                   help="positions to run, prompt included; 0 = the model's context "
                        "(default: %(default)s)")
    p.add_argument("-z", dest="tokenizer", default=models.DEFAULT_TOKENIZER,
                   help="tokenizer file or name (default: %(default)s)")
    p.add_argument("-k", dest="kernels", choices=["auto", "generic"], default="auto",
                   help="kernel set (default: %(default)s)")
    p.add_argument("-j", dest="threads", type=int, default=1,
                   help="threads per matrix product (default: %(default)s)")


def _seed(seed: int) -> int:
    # the reference reads the seed as a C int and widens it to 64 bits
    return seed % 2**64


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine import Engine, Params

    params = Params(temperature=args.temperature, topp=args.topp, seed=_seed(args.seed),
                    steps=args.steps, kernels=args.kernels, n_threads=args.threads)
    engine = Engine(models.find(args.model), models.find(args.tokenizer), params)
    out = sys.stdout.buffer
    ids = []
    for token in engine.tokens(args.prompt):
        ids.append(token.id)
        if token.printable:
            out.write(token.piece)
        out.flush()
    out.write(b"\n")
    out.flush()
    if args.ids:
        with open(args.ids, "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    if engine.stats.tokens > 1:
        print(f"achieved tok/s: {engine.stats.tokens_per_second:f}", file=sys.stderr)
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    for name in (models.DEFAULT_MODEL, models.DEFAULT_TOKENIZER):
        print(models.download(name, args.dest))
    return 0


# Subcommands that live in their own modules: name -> (module, one-line help). Only the
# module of the command being run is imported, so the board daemon does not carry the
# voice host's, the benchmark's or the converter's imports in its memory.
COMMANDS = {
    "tell": ("tellcmd", "generate a story and speak it, sentence by sentence, as it is written"),
    "serve": ("board", "run the board: button, prompts, stories to the voice host"),
    "ask": ("ask", "ask a running board (storybot serve) for a story"),
    "voice-host": ("voicehost", "serve boards: hear prompts (Vosk), speak stories (Piper)"),
    "pair": ("pair", "pair a board with its voice host (a shared secret, mode 0600)"),
    "bench": ("dev.bench", "measure speed and memory of each build beside baselines"),
    "quantize": ("dev.quantize", "convert a llama2.c fp32 checkpoint to storybot's int8 or 4-bit file"),
    "eval": ("dev.evaluate", "perplexity and greedy agreement of model formats against fp32"),
    "bundle": ("dev.bundle", "cross-build what goes onto the board, with its quantized model"),
    "board-vm": ("dev.boardvm", "boot an emulated Duo, install a bundle, tell a story there"),
}


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it: $COLUMNS, else the
    terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the width it would ask shutil for: argparse makes a formatter
    for every argument it adds, and importing shutil there also loads bz2 and lzma with
    their C libraries, 0.3 MiB of the board daemon's memory (board/README.md)."""

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("width", _columns() - 2)
        super().__init__(prog, **kwargs)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with _Formatter; subcommands' parsers are of the same class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _requested(argv: List[str]) -> Optional[str]:
    """The subcommand named in argv, if any (the first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The parser; with argv, only the named subcommand's module is imported."""
    parser = _Parser(prog="storybot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"storybot {__version__}")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="print a story exactly as llama2.c's run does")
    p.add_argument("model", help="model file or name, e.g. stories15M.bin")
    _add_sampling(p)
    p.add_argument("-i", dest="prompt", default=None, help="prompt")
    p.add_argument("-m", dest="mode", choices=["generate"], default="generate",
                   help="mode (chat is not supported)")
    p.add_argument("-o", dest="ids", default=None, help="also write the token ids to this file")
    p.set_defaults(func=cmd_generate)

    wanted = _requested(sys.argv[1:] if argv is None else argv)
    for name, (module, summary) in COMMANDS.items():
        if name == wanted:
            importlib.import_module(f".{module}", __package__).register(sub)
        else:
            sub.add_parser(name, help=summary)  # named for --help; defined when run

    p = sub.add_parser("fetch-models", help="download stories15M.bin and tokenizer.bin, "
                                            "checking their sha256")
    p.add_argument("--dest", default=None, help="folder (default: ~/.cache/storybot/models)")
    p.set_defaults(func=cmd_fetch_models)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .engine import EngineError

    try:
        return args.func(args)
    except (EngineError, models.ModelNotFound, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
