"""storybot ask: a typed prompt to a running board, its story printed as it is told."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from . import link, seal
from .board import DEFAULT_CONTROL_PORT
from .link import is_loopback

_LOGGER = logging.getLogger(__name__)


async def ask(address: str, prompt: str, settings: link.LinkSettings = link.LinkSettings(),
              out=None, secret: bytes | None = None) -> int:
    """Ask the board at address for a story; print each sentence; 0 once it is over.
    A board that is not on loopback wants the pairing secret (robot.seal): given, or
    read from where storybot pair keeps it."""
    out = out or sys.stdout
    host, port = link.parse_address(address)
    if secret is None and not is_loopback(host):
        secret = seal.load()
    client, conn = await link.open_link(host, port, settings, secret, f"board {host}:{port}")
    outcome = {"code": 1}

    async def handle(event: link.Event) -> bool:
        data = event.data
        if event.type == link.STORY_START:
            print(f"story {data['story']} ({data.get('source', '?')}): {data['opening']}",
                  file=sys.stderr)
        elif event.type == link.STORY_SENTENCE:
            print(data["text"], file=out, flush=True)
        elif event.type == link.STORY_END:
            if "stopped" in data:
                print(f"(stopped: {data['stopped']})", file=sys.stderr)
            outcome["code"] = 0
            return False
        elif event.type == link.ERROR:
            print(f"error: {data['text']}", file=sys.stderr)
            return False
        return True

    try:
        await conn.send(link.Event(link.STORY_REQUEST, {"text": prompt}))
        await conn.run(handle)
    finally:
        await client.disconnect()
    return outcome["code"]


def register(subparsers) -> None:
    p = subparsers.add_parser("ask", help="ask a running board (storybot serve) for a story")
    p.add_argument("prompt", help="what the story is about, or how it opens")
    p.add_argument("--board", default=os.environ.get("STORYBOT_CONTROL",
                                                     f"127.0.0.1:{DEFAULT_CONTROL_PORT}"),
                   help="the board's control HOST:PORT [STORYBOT_CONTROL] (default: %(default)s)")
    p.add_argument("--pairing", default=None,
                   help="pair with the board using this secret file, also on a loopback "
                        "address (a forwarded port); default: only off loopback, with the "
                        "secret storybot pair keeps")
    p.set_defaults(func=_cmd_ask)


def _cmd_ask(args: argparse.Namespace) -> int:
    try:
        secret = seal.load(Path(args.pairing)) if args.pairing else None
        return asyncio.run(ask(args.board, args.prompt, secret=secret))
    except BrokenPipeError:
        # `storybot ask ... | head`: a reader that has read enough is no error. stdout goes
        # to /dev/null so that the interpreter's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
