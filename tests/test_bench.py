"""storybot bench on the host: every build and a baseline are timed in one invocation and
the report carries what the speed issue asks for (the numbers are the benchmark's
business, never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_bench_reports_builds_baseline_and_roofline(tmp_path, model_path, tokenizer_path):
    out = tmp_path / "bench.json"
    run = REPO / "native" / "build" / "storybot-run"
    r = subprocess.run([sys.executable, "-m", "robot.cli", "bench", "--model", str(model_path),
                        "--tokenizer", str(tokenizer_path), "--runs", "1", "--baseline", str(run),
                        "--json", str(out), "--plot", str(tmp_path / "bench.png")],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    builds = {b["name"]: b for b in json.loads(out.read_text())["builds"]}
    assert set(builds) == {"storybot", "storybot generic", "storybot-run"}
    ours = builds["storybot"]
    assert ours["tok_s"] > 0 and ours["prompt_tok_s"] > 0 and ours["peak_rss_mb"] > 0
    # the story runs every position: 4 prompt tokens, then generation up to 255
    assert len(ours["ms_by_position"]) == 256 and ours["last_position"] == 255
    assert ours["first_generated_position"] == 4
    assert 0 < ours["roofline_fraction"] and 0 < ours["roofline_huge_fraction"]
    assert builds["storybot-run"]["tok_s"] > 0
    assert "| storybot-run " in r.stdout and "roofline 2M" in r.stdout
    assert (tmp_path / "bench.png").stat().st_size > 0
