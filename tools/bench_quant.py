#!/usr/bin/env python3
"""Benchmarks storybot's model formats side by side with upstream llama2.c run/runq.

    python tools/bench_quant.py --run /tmp/run --runq /tmp/runq --runs 5 --json bench.json

Every case runs --runs times, round robin in the same invocation (so a busy machine
slows all of them alike); the table shows medians of the binaries' own "achieved tok/s"
(the clock starts after the first position, as run.c's) and of the peak RSS (wait4's
ru_maxrss). Cases: the native CLI on fp32 / q8_0 / q4_0 / ak42, the Python engine (cffi)
on q8_0 and fp32, upstream run on fp32 and runq on ak42 when given. Quantized files are
made next to --workdir if missing (ak42 with tests/quantgen.py, as export.py would).
With tools/riscv set up (tools/riscv/env.sh), --riscv also builds the CLI for the C906
(GCC 14, XTheadVector) and RVV 1.0 (clang) and counts executed instructions per
generated token under qemu (two runs, 1 and --rv-steps positions, differenced).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


def measure(argv, env=None):
    """Runs argv once and returns (tok/s, peak RSS MB). The peak comes from wait4's
    ru_maxrss, which would include the pages of this (large) Python process at the fork,
    so argv is started by a small shell that forks it in turn; wait4 on the shell reports
    the largest of the two."""
    shell = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
    p = subprocess.Popen(shell + [str(a) for a in argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: {err.decode(errors='replace')[-400:]}")
    m = re.search(rb"achieved tok/s: ([0-9.]+)", err)
    return (float(m.group(1)) if m else 0.0), usage.ru_maxrss / 1024


PY_STORY = """
import sys, time
from robot.engine import Engine, Params
e = Engine(sys.argv[1], sys.argv[2], Params(kv_fp16=sys.argv[5] == "1"))
n = 0
for t in e.tokens(sys.argv[4], Params(temperature=0.0, steps=int(sys.argv[3]), kv_fp16=sys.argv[5] == "1")):
    n += 1
print(f"achieved tok/s: {e.stats.tokens_per_second:f}", file=sys.stderr)
"""


def ensure_models(model, workdir: Path):
    from robot.dev import quantize

    workdir.mkdir(parents=True, exist_ok=True)
    files = {"fp32": Path(model)}
    for fmt in ("q8_0", "q4_0"):
        path = workdir / f"{Path(model).stem}.{fmt}.bin"
        if not path.exists():
            quantize.convert(model, path, fmt)
        files[fmt] = path
    path = workdir / f"{Path(model).stem}.ak42.bin"
    if not path.exists():
        sys.path.insert(0, str(REPO / "tests"))
        from quantgen import write_ak42

        write_ak42(model, path)
    files["ak42"] = path
    return files


# ----------------------------------------------------------------------------
# riscv instruction counts

def riscv_env():
    env_sh = REPO / "tools" / "riscv" / "env.sh"
    if not env_sh.exists():
        return None
    r = subprocess.run(["bash", "-c", f". {env_sh} 2>&1 && env"], capture_output=True, text=True)
    if r.returncode or "environment incomplete" in r.stdout:
        return None
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def count_insns(qemu, plugin, binary, model, tokenizer, steps, prompt, workdir):
    """Instructions, vector instructions and C906 cycle estimate of one run, and the
    number of tokens it generated."""
    out = workdir / "counts.txt"
    ids = workdir / "ids.txt"
    argv = qemu.split() + ["-plugin", plugin, str(binary), str(model), "-z", str(tokenizer),
                           "-t", "0", "-n", str(steps), "-o", str(ids)] + (["-i", prompt] if prompt else [])
    subprocess.run(argv, env={"INSNCOUNT_OUT": str(out), "PATH": "/usr/bin:/bin"},
                   capture_output=True, check=True, timeout=3600)
    fields = {line.split()[0]: line.split() for line in out.read_text().splitlines()}
    tokens = len(ids.read_text().split())
    return (int(fields["insns"][1]), int(fields["insns"][3]), int(fields["c906_cycles"][1]), tokens)


def riscv_counts(env, files, tokenizer, steps, prompt, formats):
    results = []
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        for name, cc, qemu, plugin in (("c906-xtheadvector", "RV_CC_XTHEAD", "QEMU_C906", "INSNCOUNT_C906_PLUGIN"),
                                       ("rvv1.0-clang", "RV_CC_CLANG", "QEMU_RVV", "INSNCOUNT_SO")):
            build = tmp / name
            subprocess.run(["make", "-s", "-C", str(REPO / "native"), f"BUILD={build}",
                            f"CC={env[cc]}", f"{build}/storybot-run"], check=True, env=env,
                           capture_output=True, timeout=900)
            for fmt in formats:
                a = count_insns(env[qemu], env[plugin], build / "storybot-run", files[fmt],
                                tokenizer, 1, prompt, tmp)
                b = count_insns(env[qemu], env[plugin], build / "storybot-run", files[fmt],
                                tokenizer, steps, prompt, tmp)
                n = b[3] - a[3]
                results.append({"target": name, "format": fmt, "tokens": n,
                                "insns_per_token": (b[0] - a[0]) / n,
                                "vector_per_token": (b[1] - a[1]) / n,
                                "c906_cycles_per_token": (b[2] - a[2]) / n})
                print(f"  {name} {fmt}: {results[-1]['insns_per_token'] / 1e6:.2f} M insns/token "
                      f"over {n} tokens", file=sys.stderr)
    return results


# ----------------------------------------------------------------------------
# main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "stories15M.bin"))
    ap.add_argument("--tokenizer", default=str(SHARED / "models" / "tokenizer.bin"))
    ap.add_argument("--workdir", default=str(Path.home() / ".cache" / "storybot" / "bench"),
                    help="where quantized files are made (default: %(default)s)")
    ap.add_argument("--run", help="upstream llama2.c run binary (runs the fp32 model)")
    ap.add_argument("--runq", help="upstream llama2.c runq binary (runs the ak42 model)")
    ap.add_argument("--runs", type=int, default=5, help="runs per case (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=256, help="positions per story (default: %(default)s)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--riscv", action="store_true", help="also count riscv instructions per token")
    ap.add_argument("--rv-steps", type=int, default=65,
                    help="positions of the longer riscv run (default: %(default)s)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    subprocess.run(["make", "-s", "-C", str(REPO / "native")], check=True)
    cli = REPO / "native" / "build" / "storybot-run"
    files = ensure_models(args.model, Path(args.workdir))
    common = ["-z", args.tokenizer, "-t", "0", "-n", str(args.steps), "-i", args.prompt]
    py = [sys.executable, "-c", PY_STORY]
    pyenv = dict(os.environ, PYTHONPATH=str(REPO))
    cases = [(f"storybot {fmt}", [str(cli), str(files[fmt])] + common, None)
             for fmt in ("fp32", "q8_0", "q4_0", "ak42")]
    cases.append(("storybot q8_0 kv_fp16", [str(cli), str(files["q8_0"])] + common + ["-c", "fp16"], None))
    for fmt in ("q8_0", "fp32"):
        cases.append((f"python {fmt}", py + [str(files[fmt]), args.tokenizer, str(args.steps),
                                             args.prompt, "0"], pyenv))
    if args.run:
        cases.append(("upstream run fp32", [args.run, str(files["fp32"])] + common, None))
    if args.runq:
        cases.append(("upstream runq ak42", [args.runq, str(files["ak42"])] + common, None))

    samples = {name: [] for name, _, _ in cases}
    for i in range(args.runs):  # round robin: load on the machine hits every case alike
        for name, argv_, env in cases:
            try:
                samples[name].append(measure(argv_, env))
            except RuntimeError as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr)
                samples[name] = None
                cases = [c for c in cases if c[0] != name]
                break
    rows = []
    for name, s in samples.items():
        if not s:
            continue
        rows.append({"case": name, "tok_s": statistics.median(t for t, _ in s),
                     "tok_s_all": [round(t, 1) for t, _ in s],
                     "peak_rss_mb": statistics.median(r for _, r in s)})
    runq = next((r["tok_s"] for r in rows if r["case"] == "upstream runq ak42"), None)
    fp32 = next(r["tok_s"] for r in rows if r["case"] == "storybot fp32")
    print(f"{'case':<24} {'tok/s':>8} {'vs runq':>8} {'vs fp32':>8} {'peak RSS MB':>12}")
    for r in rows:
        vs_runq = f"{r['tok_s'] / runq:7.2f}x" if runq else f"{'-':>8}"
        print(f"{r['case']:<24} {r['tok_s']:8.1f} {vs_runq} {r['tok_s'] / fp32:7.2f}x "
              f"{r['peak_rss_mb']:12.1f}")
    result = {"steps": args.steps, "runs": args.runs, "cases": rows}
    if args.riscv:
        env = riscv_env()
        if env:
            result["riscv"] = riscv_counts(env, files, args.tokenizer, args.rv_steps,
                                           args.prompt, ("q8_0", "q4_0"))
            print(f"\n{'riscv target':<20} {'format':<6} {'M insns/tok':>12} {'M vector':>9} "
                  f"{'M C906 cycles':>14}")
            for r in result["riscv"]:
                print(f"{r['target']:<20} {r['format']:<6} {r['insns_per_token'] / 1e6:12.2f} "
                      f"{r['vector_per_token'] / 1e6:9.2f} {r['c906_cycles_per_token'] / 1e6:14.2f}")
        else:
            print("riscv: tools/riscv is not set up (bash tools/riscv/setup.sh)", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
