"""storybot bench: tokens per second, memory and riscv64 instruction counts, side by side.

Every build runs in the same invocation as the baselines it is compared with, so the
machine's load at the moment affects all of them alike. Numbers are reported, never
asserted. Host builds are timed by native/build/storybot-bench (per-position times and
the machine's read bandwidth, the fp32 roofline, on plain memory and on 2 MB pages); a
baseline is any binary with run.c's command line (its "achieved tok/s" line is read);
riscv64 builds run under qemu-user with the qemu-insncount plugin, which counts
instructions between markers around each generated token.

With --riscv, the C906 table also puts storybot's XTheadVector CLI (on every --model)
beside riscv64 programs given with --riscv-baseline PROG::MODEL (anything with run.c's
command line: llama2.c's run and runq, the S2311 winner's runq-fast-gcc), counted the
same way for all of them, as issue 16 describes: the T-Head qemu (-cpu c906fdv) with the
plugin's C906 cost model (vspec 0.7), the story's prompt with seed 7, sampled
(temperature 1, top-p 0.9) and greedy, and per generated token the difference of two
whole-run counts, RISCV_STEPS[1] positions less RISCV_STEPS[0] (so loading, the prompt
and exit cancel out). A story that ends (BOS) before the longer count makes the
difference meaningless; the row then says so. Modeled tok/s = 1 / (cycles at 1 GHz +
weight bytes at 1.0 GB/s), weight bytes per token = the model file's size (every weight
is read once per token; the shared embedding is the classifier).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import statistics
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .. import models

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
NATIVE = REPO / "native"

# Prompt positions are timed apart from generated ones. With the fp32 model this seed
# runs all 256 positions before the story ends, so the last position shows the longest
# attention; a quantized model tells another story, which may end sooner.
STORY = ["-i", "Once upon a time", "-t", "1.0", "-p", "0.9", "-s", "13"]

# the C906 table (issue 16's method): positions counted, seed, and the two samplings
RISCV_STEPS = (80, 144)
RISCV_SEED = "7"
RISCV_MODES = {"sampled": ["-t", "1.0", "-p", "0.9"], "greedy": ["-t", "0"]}

# riscv64 builds: name -> (compiler variable of tools/riscv/env.sh, emulator variable,
# plugin argument variable, INSNCOUNT_VSPEC)
RISCV_BUILDS = {
    "rv64gc-gcc12": ("RV_CC_GCC", "QEMU_RV", "INSNCOUNT_SO", "1.0"),
    "rvv1.0-clang16": ("RV_CC_CLANG", "QEMU_RVV", "INSNCOUNT_SO", "1.0"),
    "xtheadvector-gcc14": ("RV_CC_XTHEAD", "QEMU_C906", "INSNCOUNT_C906_PLUGIN", "0.7"),
}


@dataclass
class Result:
    """One build or baseline on one model."""

    name: str
    model: str
    tok_s: float = 0.0
    """Generated tokens per second (median of runs; prompt positions excluded)."""
    prompt_tok_s: float = 0.0
    ms_first: float = 0.0
    """Milliseconds for position 0 (a prompt position: no classifier)."""
    ms_first_generated: float = 0.0
    """Milliseconds for the first generated position (the first with the classifier)."""
    first_generated_position: int = 0
    ms_last: float = 0.0
    """Milliseconds for the last position the story reached (the longest attention)."""
    last_position: int = 0
    peak_rss_mb: float = 0.0
    roofline_fraction: float = 0.0
    """Median over runs of the run's tok/s over (read bandwidth / weight bytes per token),
    the bandwidth read from plain memory just after the run (fp32 builds only)."""
    roofline_huge_fraction: float = 0.0
    """The same with the bandwidth read from memory on 2 MB pages, as the weights are held
    where transparent huge pages are offered."""
    insns_per_token: float = 0.0
    vector_insns_per_token: float = 0.0
    scalar_insns_per_token: float = 0.0
    cycles_per_token: float = 0.0
    """Estimated C906 cycles (the plugin's cost model), riscv64 builds only."""
    ms_by_position: List[float] = field(default_factory=list)
    note: str = ""


# ---------------------------------------------------------------------------- running

def make(target_dir: str, cc: Optional[str] = None, defines: str = "") -> Path:
    """Builds storybot-bench and storybot-run into native/<target_dir>, with `defines`
    (e.g. "-DSB_PROFILE") added to the compiler's flags."""
    args = ["make", "-s", "-C", str(NATIVE), f"BUILD={target_dir}", "OPT=-O3"]
    if defines:
        args.append(f"CFLAGS=-O3 -g {defines}")
    if cc:
        args += [f"CC={cc}", "AR=riscv64-linux-gnu-ar"]
    args += [f"{target_dir}/storybot-bench", f"{target_dir}/storybot-run"]
    subprocess.run(args, check=True)
    return NATIVE / target_dir


def _timed(argv: List[str]) -> tuple:
    """Runs argv to completion; returns (stdout, stderr, peak RSS MB).

    The peak comes from GNU time, not from wait4 here: a child of this Python inherits
    Python's own peak RSS at exec, which would hide the program's."""
    with tempfile.NamedTemporaryFile("r") as rss_file:
        proc = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", rss_file.name, *argv],
                              capture_output=True)
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace')[-400:]}")
        rss_kb = int(rss_file.read().split()[-1])
    return proc.stdout.decode(), proc.stderr.decode(errors="replace"), rss_kb / 1024


def bench_host(name: str, binary: Path, model: Path, tok: Path, runs: int,
               kernels: str = "auto", threads: int = 1) -> Result:
    """Times `runs` runs, one process each. An fp32 run is paired with a read-bandwidth
    sample taken right after it, so the roofline fraction compares the two under the same
    load of this machine (a shared machine's bandwidth drifts by tens of percent). The
    sample runs in its own process: its buffers must not count in the peak RSS."""
    gen_rates, prompt_rates, series, fractions, rss = [], [], [], ([], []), 0.0
    bandwidths: tuple = ([], [])
    for _ in range(runs):
        out, _, peak = _timed([str(binary), str(model), str(tok), "-n", "256", "-r", "1",
                               "-k", kernels, "-j", str(threads), "-b", "0", *STORY])
        data = json.loads(out)
        rss = max(rss, peak)
        ms, p = data["runs"][0]["ms"], data["runs"][0]["prompt_tokens"]
        gen = ms[p:]
        if gen:
            gen_rates.append(len(gen) / (sum(gen) / 1e3))
        if p:
            prompt_rates.append(p / (sum(ms[:p]) / 1e3))
        series.append(ms)
        if data["format"] == "llama2c-fp32" and gen and threads == 1:  # one core's roof
            bw, _, _ = _timed([str(binary), str(model), str(tok), "-r", "0", "-k", kernels])
            bw = json.loads(bw)
            for i, key in enumerate(("read_gbps", "read_gbps_huge")):
                bandwidths[i].append(bw[key])
                fractions[i].append(gen_rates[-1] / (bw[key] * 1e9 / data["weight_bytes"]))
    ms_by_pos = [statistics.median(col) for col in zip(*series)]
    first_gen = min(p, len(ms_by_pos) - 1)
    r = Result(name, model.name, tok_s=statistics.median(gen_rates),
               prompt_tok_s=statistics.median(prompt_rates) if prompt_rates else 0.0,
               ms_first=ms_by_pos[0], ms_first_generated=ms_by_pos[first_gen],
               first_generated_position=first_gen, ms_last=ms_by_pos[-1],
               last_position=len(ms_by_pos) - 1, peak_rss_mb=rss,
               ms_by_position=ms_by_pos, note=f"kernels {data['kernels']}, {data['format']}")
    if fractions[0]:
        r.roofline_fraction, r.roofline_huge_fraction = map(statistics.median, fractions)
        plain, huge = map(statistics.median, bandwidths)
        r.note += (f", read {plain:.1f} GB/s (2 MB pages {huge:.1f}), median of runs;"
                   f" roofline {plain * 1e9 / data['weight_bytes']:.0f} tok/s"
                   f" ({huge * 1e9 / data['weight_bytes']:.0f})")
    return r


def bench_cli(name: str, argv_prefix: List[str], model: Path, tok: Path, runs: int) -> Result:
    """A run.c-compatible program on the same story, read from its "achieved tok/s" line."""
    rates, rss = [], 0.0
    for _ in range(runs):
        _, err, peak = _timed([*argv_prefix, str(model), "-z", str(tok), "-n", "256", *STORY])
        m = re.search(r"achieved tok/s: ([0-9.]+)", err)
        if not m:
            raise RuntimeError(f"{name} printed no 'achieved tok/s' line")
        rates.append(float(m.group(1)))
        rss = max(rss, peak)
    return Result(name, model.name, tok_s=statistics.median(rates), peak_rss_mb=rss,
                  note="achieved tok/s as printed")


# ---------------------------------------------------------------------------- riscv64

def riscv_env() -> Dict[str, str]:
    """tools/riscv/env.sh's variables (after tools/riscv/setup.sh)."""
    script = REPO / "tools" / "riscv" / "env.sh"
    out = subprocess.run(["bash", "-c", f". {shlex.quote(str(script))} && env -0"],
                         capture_output=True, check=True).stdout.decode()
    return dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)


def _count(emu: List[str], plugin: str, vspec: str, binary: Path, model: Path, tok: Path,
           steps: int) -> tuple:
    """(per generated position (insns, cycles), total insns, total vector insns) of one
    run of the story for `steps` positions."""
    env = {"INSNCOUNT_VSPEC": vspec, "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run([*emu, "-plugin", plugin, str(binary), str(model), str(tok),
                           "-n", str(steps), "-r", "1", "-b", "0", *STORY],
                          capture_output=True, env=env, check=True)
    text = proc.stderr.decode(errors="replace")
    marks = [(int(a), int(b), int(c)) for a, b, c in re.findall(r"^mark (\d+) (\d+) (\d+)$", text, re.M)]
    # each position lies between a mark 1 and the next mark 2; the last call only
    # reports the end of the story
    spans = [(m2[1] - m1[1], m2[2] - m1[2]) for m1, m2 in zip(marks[::2], marks[1::2])][:-1]
    prompt = json.loads(proc.stdout)["runs"][0]["prompt_tokens"]
    total = re.search(r"^insns (\d+) vector (\d+)$", text, re.M)
    return spans[prompt:], int(total.group(1)), int(total.group(2))


def bench_riscv(name: str, env: Dict[str, str], model: Path, tok: Path, steps: int) -> Result:
    cc_var, emu_var, plugin_var, vspec = RISCV_BUILDS[name]
    build = make(f"build/{name}", env[cc_var])
    emu = shlex.split(env[emu_var])
    spans, insns, vec = _count(emu, env[plugin_var], vspec, build / "storybot-bench", model, tok, steps)
    if len(spans) < 2:
        raise ValueError(f"{steps} positions leave {len(spans)} generated after the story's "
                         "prompt; give --riscv-steps room for at least 2")
    # vector instructions are only totalled at exit: difference two runs of different
    # length (the same prompt, so the difference is generated positions only)
    half = steps - len(spans) // 2
    _, _, vec_h = _count(emu, env[plugin_var], vspec, build / "storybot-bench", model, tok, half)
    per_token = statistics.median(s[0] for s in spans)
    vector = (vec - vec_h) / (steps - half)
    return Result(name, model.name, insns_per_token=per_token,
                  cycles_per_token=statistics.median(s[1] for s in spans),
                  vector_insns_per_token=vector, scalar_insns_per_token=per_token - vector,
                  note=f"qemu-user, the story's sampling, generated positions of the first {steps}")


@dataclass
class C906Row:
    """One riscv64 program on one model, per generated token (issue 16's table)."""

    program: str
    model: str
    mode: str
    insns_per_token: float = 0.0
    cycles_per_token: float = 0.0
    weight_mb_per_token: float = 0.0
    modeled_tok_s: float = 0.0
    note: str = ""


def whole_run(emu: List[str], plugin: str, argv: List[str], model: Path, tok: Path,
               steps: int, mode: str) -> tuple:
    """(insns, C906 cycles, stdout, the plugin's report) of one whole run of a run.c-compatible
    program."""
    env = {"INSNCOUNT_VSPEC": "0.7", "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run([*emu, "-plugin", plugin, *argv, str(model), "-z", str(tok),
                           "-n", str(steps), "-s", RISCV_SEED, *RISCV_MODES[mode],
                           "-i", STORY[1]], capture_output=True, env=env)
    text = proc.stderr.decode(errors="replace")
    insns = re.search(r"^insns (\d+) vector \d+$", text, re.M)
    cycles = re.search(r"^c906_cycles (\d+) ", text, re.M)
    if proc.returncode or not insns or not cycles:
        raise RuntimeError(f"{argv[0]} under qemu failed ({proc.returncode}): {text[-400:]}")
    return int(insns.group(1)), int(cycles.group(1)), proc.stdout, text


def c906_row(label: str, argv: List[str], model: Path, tok: Path, mode: str,
             env: Dict[str, str], weight_bytes: int) -> C906Row:
    emu = shlex.split(env["QEMU_C906"])
    (i0, c0, out0, _), (i1, c1, out1, _) = (
        whole_run(emu, env["INSNCOUNT_C906_PLUGIN"], argv, model, tok, n, mode)
        for n in RISCV_STEPS)
    n = RISCV_STEPS[1] - RISCV_STEPS[0]
    row = C906Row(label, model.name, mode, (i1 - i0) / n, (c1 - c0) / n, weight_bytes / 1e6)
    row.modeled_tok_s = 1e9 / (row.cycles_per_token + row.weight_mb_per_token * 1e6)
    if out1 == out0:
        row.note = f"story ended before position {RISCV_STEPS[0]}: not per token"
    return row


def c906_table(rows: List[C906Row]) -> str:
    lines = ["| program | model | sampling | insns/token | est. C906 cycles/token | "
             "weight MB/token | modeled tok/s | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.program} | {r.model} | {r.mode} | {r.insns_per_token / 1e6:.2f}M | "
                     f"{r.cycles_per_token / 1e6:.1f}M | {r.weight_mb_per_token:.1f} | "
                     f"{r.modeled_tok_s:.1f} | {r.note} |")
    return "\n".join(lines)


def bench_c906(models_: List[Path], baselines: List[str], tok: Path) -> List[C906Row]:
    """storybot's XTheadVector CLI on every model, then each PROG::MODEL baseline. Weight
    bytes per token: for storybot what its library reads (a draft classifier's file holds
    a classifier it reads only in part), for a baseline its whole file."""
    from ..engine import Engine

    env = riscv_env()
    build = make("build/xtheadvector-gcc14", env["RV_CC_XTHEAD"])
    programs = []
    for m in models_:
        with Engine(m, tok) as e:
            programs.append(("storybot, XTheadVector", [str(build / "storybot-run")], m,
                             e.info.weight_bytes))
    for base in baselines:
        command, _, model = base.partition("::")
        if not model:
            raise ValueError(f"--riscv-baseline {base!r}: give PROG::MODEL")
        argv = shlex.split(command)
        programs.append((Path(argv[0]).name, argv, Path(model), Path(model).stat().st_size))
    rows = []
    for label, argv, model, weight_bytes in programs:
        for mode in RISCV_MODES:
            _LOGGER.info("counting %s on %s, %s", label, model.name, mode)
            rows.append(c906_row(label, argv, model, tok, mode, env, weight_bytes))
    return rows


# ---------------------------------------------------------------------------- report

def table(results: List[Result]) -> str:
    rows = [("build", "model", "tok/s", "prompt tok/s", "ms pos 0", "ms first gen", "ms last pos",
             "peak RSS MB", "roofline", "roofline 2M", "insns/tok", "scalar/tok", "vector/tok",
             "C906 cycles/tok")]
    for r in results:
        rows.append((r.name, r.model, f"{r.tok_s:.1f}" if r.tok_s else "",
                     f"{r.prompt_tok_s:.1f}" if r.prompt_tok_s else "",
                     f"{r.ms_first:.2f}" if r.ms_first else "",
                     f"{r.ms_first_generated:.2f} ({r.first_generated_position})"
                     if r.ms_first_generated else "",
                     f"{r.ms_last:.2f} ({r.last_position})" if r.ms_last else "",
                     f"{r.peak_rss_mb:.1f}" if r.peak_rss_mb else "",
                     f"{r.roofline_fraction:.0%}" if r.roofline_fraction else "",
                     f"{r.roofline_huge_fraction:.0%}" if r.roofline_huge_fraction else "",
                     f"{r.insns_per_token / 1e6:.2f}M" if r.insns_per_token else "",
                     f"{r.scalar_insns_per_token / 1e6:.2f}M" if r.scalar_insns_per_token else "",
                     f"{r.vector_insns_per_token / 1e6:.2f}M" if r.vector_insns_per_token else "",
                     f"{r.cycles_per_token / 1e6:.1f}M" if r.cycles_per_token else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def plot(results: List[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds: Dict[str, List[float]] = {}  # one bar per build and model: median of rounds
    for r in results:
        if r.tok_s:
            rounds.setdefault(f"{r.name} · {r.model}", []).append(r.tok_s)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 2 + 0.28 * len(rounds)))
    mid = [statistics.median(v) for v in rounds.values()]
    spread = [[m - min(v) for m, v in zip(mid, rounds.values())],
              [max(v) - m for m, v in zip(mid, rounds.values())]]
    left.barh(list(rounds), mid, xerr=spread, capsize=2)
    left.invert_yaxis()
    left.tick_params(axis="y", labelsize=7)
    left.set_xlabel("generated tokens/s (median of rounds; bars: their range)")
    seen = set()
    for r in results:  # one line per build and model: later rounds repeat the first
        if r.ms_by_position and (r.name, r.model) not in seen:
            seen.add((r.name, r.model))
            right.plot(range(1, len(r.ms_by_position) + 1), r.ms_by_position,
                       label=f"{r.name} · {r.model}", linewidth=0.8)
    right.set_yscale("log")
    right.set_xlabel("position")
    right.set_ylabel("ms per token")
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------- command

def cmd_bench(args: argparse.Namespace) -> int:
    tok = models.find(args.tokenizer)
    model_paths = [models.find(m) for m in (args.model or [models.DEFAULT_MODEL])]
    results: List[Result] = []
    host = make("build")
    for model in model_paths if not args.riscv_only else []:
        for _ in range(args.rounds):  # interleaved rounds: load drifts hit every build alike
            results.append(bench_host("storybot", host / "storybot-bench", model, tok, args.runs))
            results.append(bench_host("storybot generic", host / "storybot-bench", model, tok,
                                      args.runs, kernels="generic"))
            for n in args.threads:
                results.append(bench_host(f"storybot {n} threads", host / "storybot-bench",
                                          model, tok, args.runs, threads=n))
            results.append(bench_cli("storybot-run", [str(host / "storybot-run")], model, tok, args.runs))
            for base in args.baseline:
                if model != model_paths[0]:
                    continue  # baselines run once per round, on the first model or their own
                command, _, own_model = base.partition("::")
                results.append(bench_cli(Path(shlex.split(command)[0]).name, shlex.split(command),
                                         Path(own_model) if own_model else model, tok, args.runs))
    c906: List[C906Row] = []
    if args.riscv:
        env = riscv_env()
        for name in RISCV_BUILDS if not args.riscv_only else []:
            for model in model_paths:
                results.append(bench_riscv(name, env, model, tok, args.riscv_steps))
        c906 = bench_c906(model_paths, args.riscv_baseline, tok)
    if not args.riscv_only:
        print(table(results))
    if c906:
        print(f"\nC906 (qemu insncount), per generated token over positions "
              f"{RISCV_STEPS[0]}-{RISCV_STEPS[1] - 1}, seed {RISCV_SEED}:")
        print(c906_table(c906))
    profile = []
    if args.riscv_profile:
        from .c906profile import profile_table, profile_models

        profile = profile_models(model_paths, tok)
        print("\nWhere the C906 cycles of a sampled token go (est. cycles, same positions):")
        print(profile_table(profile))
    tell = []
    if args.tell:
        from .tellbench import run_tell_bench, tell_bench_table

        for model in model_paths:
            tell.append(run_tell_bench(str(model), str(tok), args.voice))
            print(f"\nstorybot tell, {model.name}: time to first audio and gaps between sentences")
            print(tell_bench_table(tell[-1]))
    if args.json:
        Path(args.json).write_text(json.dumps({"builds": [asdict(r) for r in results],
                                               "c906": [asdict(r) for r in c906],
                                               "c906_profile": profile,
                                               "tell": tell}, indent=1))
    if args.plot:
        plot(results, Path(args.plot))
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory of each build beside baselines")
    p.add_argument("--model", action="append", help="model file (repeat for several formats; "
                                                    "default stories15M.bin)")
    p.add_argument("--tokenizer", default=models.DEFAULT_TOKENIZER)
    p.add_argument("--runs", type=int, default=5, help="runs per build (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds of all host builds (default: %(default)s)")
    p.add_argument("--baseline", action="append", default=[],
                   help="a run.c-compatible command to run beside ours on the first model, "
                        "or COMMAND::MODEL on its own model (e.g. runq with an ak42 file)")
    p.add_argument("--threads", type=int, action="append", default=[],
                   help="also time this many threads (repeat for several)")
    p.add_argument("--riscv", action="store_true",
                   help="also count riscv64 instructions per token under qemu "
                        "(needs tools/riscv/setup.sh)")
    p.add_argument("--riscv-baseline", action="append", default=[], metavar="PROG::MODEL",
                   help="with --riscv: a riscv64 program with run.c's command line and its "
                        "model, counted beside storybot in the C906 table (repeat)")
    p.add_argument("--riscv-only", action="store_true",
                   help="with --riscv: only the riscv64 counts (no host timing)")
    p.add_argument("--riscv-profile", action="store_true",
                   help="with --riscv: also split each model's C906 cycles per token into "
                        "products, classifier, attention, sampling and the rest")
    p.add_argument("--riscv-steps", type=int, default=16,
                   help="positions emulated per riscv64 build (default: %(default)s)")
    p.add_argument("--tell", action="store_true",
                   help="also time storybot tell per model: first audio, sentence gaps "
                        "(into a WAV file and into a sink paced like a speaker)")
    p.add_argument("--voice", help="Piper voice for --tell (default: the joe voice)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--plot", help="write a PNG plot here")
    p.set_defaults(func=cmd_bench)
