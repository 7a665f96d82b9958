"""Time `storybot tell` as a listener hears it: first audio and the silences between sentences.

    python tools/bench_tell.py [--steps N] [--seed S] [--json FILE]

Tells the same story into a WAV file and into a sink paced like a speaker, then prints
a table and the full results as JSON (robot.tellcmd.run_tell_bench).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from robot import models
from robot.tellcmd import run_tell_bench

_LOGGER = logging.getLogger(__name__)

_COLUMNS = (
    # (heading, key, format)
    ("sink", "sink", "{}"),
    ("sentences", "sentences", "{}"),
    ("first audio s", "first_audio_seconds", "{:.3f}"),
    ("max gap s", "max_gap_seconds", "{:.3f}"),
    ("mean gap s", "mean_gap_seconds", "{:.3f}"),
    ("gen tok/s", "tokens_per_second", "{:.1f}"),
    ("speech tok/s", "speech_tokens_per_second", "{:.1f}"),
    ("synth rtf", "synth_rtf", "{:.3f}"),
    ("audio s", "audio_seconds", "{:.1f}"),
    ("total s", "total_seconds", "{:.1f}"),
    ("first<=0.5s", "first_audio_met", "{}"),
    ("gaps<=50ms", "gaps_met", "{}"),
)


def table(result: dict) -> str:
    rows = [[heading for heading, _, _ in _COLUMNS]]
    for run in result["runs"].values():
        rows.append(["-" if run[key] is None else fmt.format(run[key]) for _, key, fmt in _COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="(default: %(default)s)")
    parser.add_argument("--tokenizer", default=models.DEFAULT_TOKENIZER,
                        help="(default: %(default)s)")
    parser.add_argument("--voice", default=None, help="Piper .onnx (default: the joe voice)")
    parser.add_argument("--prompt", default="Once upon a time", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=123, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--kernels", choices=["auto", "generic"], default="auto",
                        help="(default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--debug", action="store_true", help="log every stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    result = run_tell_bench(args.model, args.tokenizer, args.voice, prompt=args.prompt,
                            seed=args.seed, steps=args.steps, kernels=args.kernels)
    print(f"{result['model']} ({result['kernels']} kernels), voice {Path(result['voice']).name}, "
          f"seed {result['seed']}, {result['steps']} steps")
    print(table(result))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
