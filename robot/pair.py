"""storybot pair: make the secret a board and its voice host share, or take it as a code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import seal


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pair", help="pair a board with its voice host (a shared secret, mode 0600)",
        description="Run it once on the voice host: it makes a secret, saves it and prints "
                    "it as a code. Then run `storybot pair --code CODE` on the board. Both "
                    "services read the file when they start.")
    p.add_argument("--code", default=None,
                   help="the code printed on the other machine (default: make a new secret)")
    p.add_argument("--file", default=str(seal.default_path()),
                   help="where the secret is kept [STORYBOT_PAIRING] (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing secret (unpairs every machine that holds it)")
    p.set_defaults(func=_cmd_pair)


def _cmd_pair(args: argparse.Namespace) -> int:
    path = Path(args.file)
    secret = seal.from_code(args.code) if args.code else seal.new_secret()
    if path.exists() and path.stat().st_size and not args.force:
        try:
            same = seal.load(path) == secret
        except ValueError:
            same = False
        if not same:
            print(f"error: {path} holds a secret already; --force replaces it", file=sys.stderr)
            return 1
    seal.save(path, secret)
    print(f"paired: secret saved in {path} (mode 0600)", file=sys.stderr)
    if not args.code:
        print("On the board, run:", file=sys.stderr)
        print(f"storybot pair --code {seal.to_code(secret)}")
    print("Then restart the services (systemctl restart storybot-voice / storybot-board).",
          file=sys.stderr)
    return 0
