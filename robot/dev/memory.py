"""Where the board daemon's memory goes: `storybot bundle --breakdown DIR`.

Measured as `storybot bundle` measures (robot.dev.bundle.guest_rss): a bundle's riscv64
Python runs under qemu-user with the guest in a region of its own, and the resident
pages of each mapping in that region are read off qemu's /proc/PID/smaps. Two tables:

* step by step: the guest python3 imports the daemon's modules one at a time (the order
  robot.board imports them), opens the engine and tells a story, and after each step
  the resident set is read, so each row is what that step added;
* the daemon: `storybot serve` telling one story, its resident set by mapping once
  ready and at the story's peak. File mappings are named by file; anonymous ones
  (malloc's heap and arenas, Python's object arenas, the KV cache, thread stacks) by
  their size, which tells them apart (the KV cache is one mapping of its own size).
"""
from __future__ import annotations

import asyncio
import io
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

from . import bundle

MIB = 1 / 2**20

# What `python3 -m robot.cli serve` imports, in order, one step per row, then the
# engine it opens and a story: (label, code the guest runs).
STEPS = [
    ("python3", "pass"),  # the interpreter, site and the driver below
    ("import robot.cli", "import robot.cli"),
    ("ssl kept out", "sys.modules.setdefault('ssl', None)"),  # as robot.board does first
    *((f"import {m}", f"import {m}") for m in (
        "robot._abi", "robot.engine", "asyncio", "robot.link", "robot.button",
        "robot.prompts", "robot.story", "robot.board", "robot.service")),
    ("Engine(model, tokenizer)",
     "engine = robot.engine.Engine(robot.models.find({model!r}), "
     "robot.models.find('tokenizer.bin'))"),
    ("a story, {steps} positions",
     "for _ in engine.tokens('Once upon a time', robot.engine.Params(seed=1, steps={steps})): pass"),
]

# Runs the lines it reads, one at a time, answering each, so that the host can read the
# resident set between them.
_DRIVER = ("import sys\n"
           "for line in sys.stdin:\n"
           "    exec(line)\n"
           "    sys.stdout.write('ok\\n')\n"
           "    sys.stdout.flush()\n")


def by_mapping(pid: int) -> dict[str, int]:
    """Resident bytes of a qemu-user process's guest region, by mapping: a file's name,
    or "anon <size>" for anonymous mappings of that size (summed over all of them)."""
    out: dict[str, int] = defaultdict(int)
    label = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields[0].endswith(":"):
                start, end = (int(a, 16) for a in fields[0].split("-"))
                label = None
                if bundle.GUEST_BASE <= start < bundle.GUEST_BASE + bundle.GUEST_SIZE:
                    label = (Path(fields[5]).name if len(fields) >= 6 and fields[5].startswith("/")
                             else f"anon {_size(end - start)}")
            elif fields[0] == "Rss:" and label is not None:
                out[label] += int(fields[1]) * 1024
    return dict(out)


def _size(n: int) -> str:
    return f"{n / 2**20:.1f}M" if n >= 2**20 else f"{n // 1024}K"


def model_of(directory: Path) -> str:
    """The bundle's model: the one file in models/ beside tokenizer.bin (which may be
    another format than the bundle's own, to measure what a model of its size costs)."""
    names = [p.name for p in (directory / "models").glob("*.bin") if p.name != "tokenizer.bin"]
    if len(names) != 1:
        raise ValueError(f"{directory / 'models'} should hold one model, not {names}")
    return names[0]


def imports(directory: Path, root: Path, steps: int) -> list[tuple[str, dict]]:
    """(step, resident set by mapping after it) for each of STEPS."""
    env = bundle.daemon_env(directory, root)
    python = str(root / "usr" / "bin" / "python3")
    proc = subprocess.Popen([*bundle.qemu_user(root, c906=True), python, "-c", _DRIVER],
                            env=env, cwd=directory, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        for label, code in STEPS:
            proc.stdin.write(code.format(steps=steps, model=model_of(directory)) + "\n")
            proc.stdin.flush()
            if proc.stdout.readline() != "ok\n":
                raise RuntimeError(f"the guest python3 failed at {code!r}")
            rows.append((label.format(steps=steps), by_mapping(proc.pid)))
    finally:
        proc.stdin.close()
        proc.wait(60)
    return rows


def daemon(directory: Path, root: Path, steps: int, extra_env: dict | None = None
           ) -> dict[str, dict]:
    """The daemon's resident set by mapping: "ready", "peak" (of the story) and "idle"."""
    from ..ask import ask

    env = {**bundle.daemon_env(directory, root), **(extra_env or {})}
    control = f"127.0.0.1:{bundle.free_port()}"
    d = bundle.Daemon(bundle.serve_argv(root, control, "--steps", str(steps), c906=True,
                                        model=model_of(directory)), env, cwd=directory)
    shots: dict[str, dict] = {}
    peak = [0, {}]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                now = by_mapping(d.proc.pid)
            except (OSError, ValueError):
                return
            if sum(now.values()) > peak[0]:
                peak[:] = [sum(now.values()), now]
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        d.wait_for("Ready:", timeout=300)
        shots["ready"] = by_mapping(d.proc.pid)
        sampler.start()
        code = asyncio.run(ask(control, "a robot who tells stories", out=io.StringIO()))
        if code != 0:
            raise RuntimeError(f"the board did not finish the story:\n{d.tail()}")
        time.sleep(1.0)
        shots["idle"] = by_mapping(d.proc.pid)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join()
        d.stop()
    shots["peak"] = peak[1]
    return shots


def _rows(labels: dict[str, int], limit: float = 0.05) -> list[tuple[str, float]]:
    """Largest first; mappings under `limit` MiB summed into one row."""
    big = sorted(((k, v * MIB) for k, v in labels.items() if v * MIB >= limit),
                 key=lambda kv: -kv[1])
    small = sum(v for v in labels.values() if v * MIB < limit) * MIB
    return big + ([("(smaller mappings)", small)] if small else [])


def report(directory: Path, root: Path, steps: int) -> str:
    lines = [f"storybot serve's resident memory under qemu-user, by mapping ({directory.name})",
             "", "STEP BY STEP (MiB added by each step, total after it)"]
    prev: dict[str, int] = {}
    for step, now in imports(directory, root, steps):
        # a growing anonymous mapping changes its label: compare over both steps' labels
        added = {k: now.get(k, 0) - prev.get(k, 0) for k in now.keys() | prev.keys()}
        top = ", ".join(f"{k} {v * MIB:+.2f}" for k, v in added.items() if abs(v) * MIB >= 0.25)
        lines.append(f"  {step:<28} {sum(added.values()) * MIB:+6.2f}  = {sum(now.values()) * MIB:6.2f}"
                     f"   {top}")
        prev = now
    shots = daemon(directory, root, steps)
    for name in ("ready", "peak", "idle"):
        lines += ["", f"DAEMON {name.upper()} ({steps}-position story): "
                      f"{sum(shots[name].values()) * MIB:.2f} MiB"]
        lines += [f"  {v:7.2f}  {k}" for k, v in _rows(shots[name])]
    return "\n".join(lines) + "\n"
