"""The ABI-mode fallback (ffi.dlopen of libstorybot.so, for a Python that cannot load the
compiled extension) gives the same stories through the same API."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, golden_cases

SCRIPT = """
import json, sys
from robot import engine
from robot.engine import Engine, Params
case = json.loads(sys.argv[1])
e = Engine(sys.argv[2], sys.argv[3])
p = Params(temperature=case["temperature"], topp=case["topp"], seed=case["seed"], steps=case["steps"])
text = b"".join(t.piece for t in e.tokens(case["prompt"], p) if t.printable) + b"\\n"
print(json.dumps({"module": engine.lib.__class__.__name__, "text": text.decode()}))
"""


def test_abi_mode_prints_golden_text(model_path, tokenizer_path):
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), "build/libstorybot.so"], check=True)
    env = dict(os.environ, STORYBOT_ABI="1")
    for case in [c for c in golden_cases() if c["id"] in ("p000", "p014", "p045")]:
        r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(case), str(model_path),
                            str(tokenizer_path)], capture_output=True, env=env, check=True, cwd=REPO)
        out = json.loads(r.stdout)
        assert out["module"].startswith("FFILibrary")  # dlopened, not the compiled extension
        assert out["text"] in [a["stdout"] for a in case["accept"]]
