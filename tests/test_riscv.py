"""riscv64 builds under qemu-user: rv64gc (gcc 12), RVV 1.0 (clang 16) and XTheadVector
(GCC 14, the C906's vector unit) each print golden text.

Emulation runs a few tokens per second, so each case runs a short step count; the
reference prints the first tokens of the same story then: the text the x86 engine
prints for that step count, itself a non-empty prefix of an accepted text (see
../shared/golden/README.md).
"""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from conftest import golden_cases, truncated_text
from robot.dev import bench
from robot.engine import Engine

pytestmark = pytest.mark.slow  # every test runs riscv64 programs under qemu

REQUIRED = os.environ.get("STORYBOT_REQUIRE_ALL") == "1"
# greedy, top-p 0.9, top-p 1.0 (the cases most sensitive to rounding), a prompt longer
# than the steps, and non-ASCII text
CASE_IDS = ["p002", "p003", "p014", "p039", "p042", "p045"]
STEPS = 32


@pytest.fixture(scope="module")
def riscv_env():
    try:
        env = bench.riscv_env()
    except subprocess.CalledProcessError:
        env = {}
    tools = [env.get("QEMU_RV", ""), env.get("QEMU_C906", ""), env.get("INSNCOUNT_SO", "")]
    if not all(t and os.path.exists(shlex.split(t)[0]) for t in tools):
        if REQUIRED:
            pytest.fail("riscv64 toolchains missing: run tools/riscv/setup.sh")
        pytest.skip("riscv64 toolchains not set up (tools/riscv/setup.sh)")
    return env


@pytest.mark.parametrize("build", list(bench.RISCV_BUILDS))
def test_golden_under_qemu(build, riscv_env, engine, model_path, tokenizer_path):
    cc_var, emu_var, _, _ = bench.RISCV_BUILDS[build]
    binary = bench.make(f"build/{build}", riscv_env[cc_var]) / "storybot-run"
    cases = [c for c in golden_cases() if c["id"] in CASE_IDS]
    for case in cases:
        argv = list(case["argv"])
        steps = min(case["steps"], STEPS)
        argv[argv.index("-n") + 1] = str(steps)
        r = subprocess.run([*shlex.split(riscv_env[emu_var]), str(binary), str(model_path),
                            "-z", str(tokenizer_path), *argv], capture_output=True, timeout=900)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert r.stdout == truncated_text(engine, case, steps), case["id"]


def test_instruction_count_is_reported(riscv_env, model_path, tokenizer_path):
    """The benchmark's counting path works end to end (the numbers are its business)."""
    r = bench.bench_riscv("xtheadvector-gcc14", riscv_env, model_path, tokenizer_path, steps=8)
    assert r.insns_per_token > 0 and r.cycles_per_token > r.insns_per_token / 2
    assert r.vector_insns_per_token > 0


def test_c906_table_counts_baselines_beside_storybot(riscv_env, tokenizer_path, tmp_path,
                                                     monkeypatch):
    """`storybot bench --riscv` counts any run.c-compatible riscv64 program on its own
    model beside storybot's XTheadVector CLI, by differencing two whole runs; here the
    rv64gc build of storybot-run stands in for a baseline (llama2.c's programs are not
    part of the project) on a small model."""
    from modelgen import Header, write_model

    model = write_model(tmp_path / "m.bin", Header(dim=64, hidden_dim=96, n_layers=2,
                                                   n_heads=4, n_kv_heads=2, seq_len=64), seed=1)
    scalar = bench.make("build/rv64gc-gcc12", riscv_env["RV_CC_GCC"]) / "storybot-run"
    monkeypatch.setattr(bench, "RISCV_STEPS", (12, 20))
    rows = bench.bench_c906([model], [f"{scalar}::{model}"], tokenizer_path)
    assert [(r.program, r.mode) for r in rows] == [
        ("storybot, XTheadVector", "sampled"), ("storybot, XTheadVector", "greedy"),
        ("storybot-run", "sampled"), ("storybot-run", "greedy")]
    with Engine(model, tokenizer_path) as e:  # storybot's rows: what its library reads
        read = {"storybot, XTheadVector": e.info.weight_bytes, "storybot-run": model.stat().st_size}
    for r in rows:
        assert r.insns_per_token > 0 and r.cycles_per_token >= r.insns_per_token / 2, r
        assert r.modeled_tok_s == pytest.approx(1e9 / (r.cycles_per_token + read[r.program]))
    # the same story with and without vectors: the vector build runs fewer instructions
    assert rows[0].insns_per_token < rows[2].insns_per_token
    assert "| storybot-run | m.bin | greedy |" in bench.c906_table(rows)


def test_c906_profile_splits_a_token_into_its_parts(riscv_env, tokenizer_path, tmp_path,
                                                    monkeypatch):
    """`storybot bench --riscv-profile` splits the C906 cycles of a generated token into
    products, classifier, attention, sampling and the rest, which add up to the total."""
    from modelgen import Header, write_model

    from robot.dev import c906profile

    model = write_model(tmp_path / "m.bin", Header(dim=64, hidden_dim=96, n_layers=2,
                                                   n_heads=4, n_kv_heads=2, seq_len=64), seed=1)
    monkeypatch.setattr(bench, "RISCV_STEPS", (12, 20))
    [row] = c906profile.profile_models([model], tokenizer_path)
    parts = [row[c] for c in c906profile.COLUMNS[:-1]]
    assert all(p > 0 for p in parts), row
    assert sum(parts) == pytest.approx(row["total"])
    # the classifier (32000 x 64) outweighs the two layers' products (70k weights)
    assert row["classifier"] > 10 * row["products"]
    assert "| m.bin | " in c906profile.profile_table([row])
