"""Shared fixtures: the real model files, the native build, the golden cases."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("STORYBOT_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "models"
GOLDEN = SHARED / "golden" / "stories15M.json"


def pytest_sessionstart(session):
    """Rebuilds the cffi extension when the native sources changed since it was built
    (pip install -e builds it once), so the tests never run yesterday's library."""
    native = REPO / "native"
    built = list((REPO / "robot").glob("_native*.so"))
    sources = [*native.glob("src/*.[ch]"), *native.glob("include/*.h"),
               REPO / "robot" / "_build.py"]
    newest = max(p.stat().st_mtime for p in sources)
    if built and min(p.stat().st_mtime for p in built) >= newest:
        return
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e",
                        str(REPO)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"rebuilding the cffi extension failed:\n{r.stderr[-3000:]}")


@pytest.fixture(scope="session")
def model_path() -> Path:
    return MODELS / "stories15M.bin"


@pytest.fixture(scope="session")
def tokenizer_path() -> Path:
    return MODELS / "tokenizer.bin"


@pytest.fixture(scope="session")
def cli() -> Path:
    """The native CLI; STORYBOT_SANITIZE=1 tests the AddressSanitizer + UBSan build."""
    sanitize = os.environ.get("STORYBOT_SANITIZE") == "1"
    target, binary = ("asan", "build/asan/storybot-run") if sanitize else ("all", "build/storybot-run")
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), target], check=True)
    return REPO / "native" / binary


@pytest.fixture(scope="session")
def engine(model_path, tokenizer_path):
    from robot.engine import Engine

    with Engine(model_path, tokenizer_path) as e:
        yield e


def golden_cases():
    return json.loads(GOLDEN.read_text())["cases"]


def truncated_text(engine, case, steps):
    """What run.c prints for a golden case cut to `steps` positions: the first tokens of
    the same story, so a non-empty prefix of an accepted text (checked here, so that a
    run printing nothing cannot pass as a prefix)."""
    from robot.engine import Params

    params = Params(temperature=case["temperature"], topp=case["topp"], seed=case["seed"],
                    steps=steps)
    text = b"".join(t.piece for t in engine.tokens(case["prompt"], params) if t.printable)
    assert text and any(a["stdout"].encode().startswith(text) for a in case["accept"])
    return text + b"\n"

