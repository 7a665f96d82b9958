"""Where a token's C906 cycles go: `storybot bench --riscv --riscv-profile`.

The XTheadVector CLI is built with -DSB_PROFILE, which brackets the parts of a token
with the qemu insncount plugin's marks (native/src/internal.h, SB_REGION): the products
(the classifier's apart), attention and sampling. Counted as bench's C906 table counts:
the T-Head qemu with the plugin's cost model, the story's prompt with seed 7, sampled,
and per generated token the difference of two whole runs (RISCV_STEPS), so loading and
the prompt cancel out. "the rest" is the total less the parts: embedding, norms, RoPE,
SwiGLU, residual adds.
"""
from __future__ import annotations

import re
import shlex
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

from . import bench

# mark pairs (start, end) -> part; the products' pair includes the classifier's products,
# counted once, in the classifier (with a draft classifier's second pass)
PARTS = {20: "classifier", 22: "products", 24: "attention", 26: "sampling"}
COLUMNS = ["products", "classifier", "attention", "sampling", "the rest", "total"]


def region_cycles(plugin_output: str) -> Dict[str, int]:
    """Estimated cycles per part over a whole run, from the plugin's mark lines."""
    open_at: Dict[int, int] = {}
    totals: Dict[str, int] = defaultdict(int)
    for mark, _, cycles in re.findall(r"^mark (\d+) (\d+) (\d+)$", plugin_output, re.M):
        mark, cycles = int(mark), int(cycles)
        if mark in PARTS:
            open_at[mark] = cycles
        elif mark - 1 in open_at:
            spent = cycles - open_at.pop(mark - 1)
            totals[PARTS[mark - 1]] += spent
            if mark == 23 and 20 in open_at:  # a product inside the classifier
                totals["classifier's products"] += spent
    return totals


def profile_models(models_: List[Path], tok: Path) -> List[dict]:
    """Per model: est. C906 cycles per generated token by part."""
    env = bench.riscv_env()
    build = bench.make("build/xtheadvector-gcc14-profile", env["RV_CC_XTHEAD"], "-DSB_PROFILE")
    emu = shlex.split(env["QEMU_C906"])
    rows = []
    for model in models_:
        runs = []
        for steps in bench.RISCV_STEPS:
            _, cycles, _, text = bench.whole_run(emu, env["INSNCOUNT_C906_PLUGIN"],
                                                  [str(build / "storybot-run")], model, tok,
                                                  steps, "sampled")
            runs.append({**region_cycles(text), "total": cycles})
        short, long_ = runs
        n = bench.RISCV_STEPS[1] - bench.RISCV_STEPS[0]
        per = {k: (long_[k] - short.get(k, 0)) / n for k in long_}
        per["products"] -= per.get("classifier's products", 0.0)
        per["the rest"] = per["total"] - sum(per.get(k, 0.0) for k in PARTS.values())
        rows.append({"model": model.name, **{c: per.get(c, 0.0) for c in COLUMNS}})
    return rows


def profile_table(rows: List[dict]) -> str:
    lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r[c] / 1e6:.2f}M" for c in COLUMNS) + " |")
    return "\n".join(lines)
