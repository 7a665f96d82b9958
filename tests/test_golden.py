"""Fidelity: every golden case of the reference run.c, through the CLI, `storybot generate`
and the Python generator."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import golden_cases, truncated_text
from robot.engine import Params

CASES = golden_cases()
# The quick loop's cases (pytest -m "not slow"): the contest's command, greedy, top-p 0.9
# and 1.0, a prompt longer than the steps, non-ASCII text; the rest are marked slow.
QUICK = {"p000", "p002", "p003", "p014", "p039", "p042", "p045"}
PARAMS = [pytest.param(c, id=c["id"], marks=() if c["id"] in QUICK else pytest.mark.slow)
          for c in CASES]
# under the sanitizers every case is too slow; the short ones still cover every path
SANITIZED = os.environ.get("STORYBOT_SANITIZE") == "1"


def accepted(case):
    return [a["stdout"].encode() for a in case["accept"]]


def run_cli(cli, model, tok, argv, tmp_path):
    ids = tmp_path / "ids.txt"
    r = subprocess.run([str(cli), str(model), "-z", str(tok), *argv, "-o", str(ids)],
                       capture_output=True, env={}, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    return r, [int(x) for x in ids.read_text().split()]


@pytest.mark.parametrize("case", PARAMS)
def test_native_cli(case, cli, engine, model_path, tokenizer_path, tmp_path):
    if SANITIZED and case["steps"] > 64:
        argv = case["argv"][:case["argv"].index("-n")] + ["-n", "24"] + case["argv"][case["argv"].index("-n") + 2:]
        r, _ = run_cli(cli, model_path, tokenizer_path, argv, tmp_path)
        assert r.stdout == truncated_text(engine, case, 24)
        return
    r, _ = run_cli(cli, model_path, tokenizer_path, case["argv"], tmp_path)
    assert r.stdout in accepted(case)
    assert (b"achieved tok/s: " in r.stderr) == (case["steps"] > 1)  # as the reference


@pytest.mark.skipif(SANITIZED, reason="the Python extension is not built with sanitizers")
@pytest.mark.parametrize("case", PARAMS)
def test_storybot_generate(case, model_path, tokenizer_path):
    r = subprocess.run([sys.executable, "-m", "robot.cli", "generate", str(model_path),
                        "-z", str(tokenizer_path), *case["argv"]], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout in accepted(case)
    assert r.stderr.decode().startswith("achieved tok/s: ") == (case["steps"] > 1)


@pytest.mark.skipif(SANITIZED, reason="the Python extension is not built with sanitizers")
@pytest.mark.parametrize("case", PARAMS)
def test_python_generator_matches_cli(case, engine, cli, model_path, tokenizer_path, tmp_path):
    _, cli_ids = run_cli(cli, model_path, tokenizer_path, case["argv"], tmp_path)
    params = Params(temperature=case["temperature"], topp=case["topp"], seed=case["seed"],
                    steps=case["steps"])
    tokens = list(engine.tokens(case["prompt"], params))
    assert [t.id for t in tokens] == cli_ids
    printed = b"".join(t.piece for t in tokens if t.printable) + b"\n"
    assert printed in accepted(case)
