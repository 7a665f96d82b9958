"""Bad input: every case gives a clear error (non-zero exit in the CLI, EngineError in
Python) and never a crash."""
from __future__ import annotations

import os
import struct
import subprocess

import numpy as np
import pytest

from modelgen import Header, with_header, write_model
from robot.engine import Engine, EngineError, Params


def cli_fails(cli, *args) -> str:
    """Runs the native CLI, checks it failed cleanly, returns its stderr."""
    argv = [a if isinstance(a, (str, bytes)) else str(a) for a in (cli, *args)]
    r = subprocess.run(argv, capture_output=True, timeout=120)
    assert r.returncode == 1, (r.returncode, r.stderr)  # a signal would be negative
    err = r.stderr.decode("utf-8", "replace")
    assert err.startswith("error: ")
    return err


def engine_fails(model, tok, params=Params(seed=1), prompt=None) -> str:
    with pytest.raises(EngineError) as exc:
        with Engine(model, tok, params) as e:
            list(e.tokens(prompt))
    return str(exc.value)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("m") / "small.bin")


# ---------------------------------------------------------------------------- files

def test_missing_files(cli, tmp_path, tokenizer_path, small):
    assert "cannot open model" in cli_fails(cli, tmp_path / "nope.bin", "-z", tokenizer_path)
    assert "cannot open tokenizer" in cli_fails(cli, small, "-z", tmp_path / "nope.bin")
    assert "cannot open model" in engine_fails(tmp_path / "nope.bin", tokenizer_path)
    assert "cannot open tokenizer" in engine_fails(small, tmp_path / "nope.bin")


def test_unreadable_files(cli, tmp_path, tokenizer_path, small):
    # tests may run as root, which reads any file; a directory is unreadable to everyone
    assert "not a regular file" in cli_fails(cli, tmp_path, "-z", tokenizer_path)
    assert "not a regular file" in engine_fails(tmp_path, tokenizer_path)
    assert "tokenizer" in engine_fails(small, tmp_path)


TRUNCATIONS = [0, 1, 4, 27, 28, 29, 100, 4096, 1_000_000]


@pytest.mark.parametrize("keep", TRUNCATIONS + [-1, -4, -1000])
def test_truncated_model(keep, tmp_path, tokenizer_path, small):
    data = small.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:keep])
    msg = engine_fails(cut, tokenizer_path)
    assert "shorter than its header" in msg or "truncated" in msg


def test_truncated_real_model(cli, tmp_path, model_path, tokenizer_path):
    cut = tmp_path / "cut.bin"
    with open(model_path, "rb") as f:
        cut.write_bytes(f.read(30_000_000))
    assert "truncated" in cli_fails(cli, cut, "-z", tokenizer_path)


def test_trailing_data(tmp_path, tokenizer_path, small):
    longer = tmp_path / "long.bin"
    longer.write_bytes(small.read_bytes() + b"\0")
    assert "trailing data" in engine_fails(longer, tokenizer_path)


BAD_HEADERS = {
    "dim zero": dict(dim=0),
    "dim negative": dict(dim=-16),
    "hidden zero": dict(hidden_dim=0),
    "layers negative": dict(n_layers=-2),
    "heads zero": dict(n_heads=0),
    "kv heads zero": dict(n_kv_heads=0),
    "dim not divisible by heads": dict(n_heads=3),
    "kv heads not dividing heads": dict(n_kv_heads=3),
    "more kv heads than heads": dict(n_kv_heads=8),
    "seq_len zero": dict(seq_len=0),
    "vocab zero": dict(vocab_size=0),
    "huge dim": dict(dim=1 << 30),
    "odd head size": dict(dim=12, n_heads=4),
    "vocab two": dict(vocab_size=2),  # <unk>, BOS and EOS are ids 0, 1, 2
    "vocab one": dict(vocab_size=1),
    "vocab two, separate classifier": dict(vocab_size=-2),
}


@pytest.mark.parametrize("name", BAD_HEADERS)
def test_bad_header(name, cli, tmp_path, tokenizer_path, small):
    h = with_header(Header(), **BAD_HEADERS[name])
    bad = tmp_path / "bad.bin"
    # the right header, then the body of a valid model: the header alone must reject it
    bad.write_bytes(h.pack() + small.read_bytes()[28:])
    msg = cli_fails(cli, bad, "-z", tokenizer_path)
    assert "model header" in msg
    assert "model header" in engine_fails(bad, tokenizer_path)


def test_vocab_disagrees_with_tokenizer(tmp_path, tokenizer_path):
    fewer = write_model(tmp_path / "v.bin", with_header(Header(), vocab_size=31999))
    assert "does not match the model's vocab_size 31999" in engine_fails(fewer, tokenizer_path)
    more = write_model(tmp_path / "w.bin", with_header(Header(), vocab_size=32001))
    assert "ends after 32000 tokens" in engine_fails(more, tokenizer_path)


# ---------------------------------------------------------------------------- tokenizer

@pytest.mark.parametrize("keep", [0, 3, 4, 8, 11, 12, 13, 1000, -1, -5])
def test_truncated_tokenizer(keep, tmp_path, tokenizer_path, small):
    cut = tmp_path / "tok.bin"
    cut.write_bytes(tokenizer_path.read_bytes()[:keep])
    assert "tokenizer" in engine_fails(small, cut)


@pytest.mark.parametrize("patch,expect", [
    (lambda d: struct.pack("<i", 0) + d[4:], "max_token_length 0"),
    (lambda d: d[:8] + struct.pack("<i", -3) + d[12:], "has length -3"),
    (lambda d: d[:8] + struct.pack("<i", 99) + d[12:], "has length 99"),
    (lambda d: d[:12] + b"\0" + d[13:], "NUL byte"),
])
def test_corrupt_tokenizer(patch, expect, cli, tmp_path, tokenizer_path, small):
    bad = tmp_path / "tok.bin"
    bad.write_bytes(patch(tokenizer_path.read_bytes()))
    assert expect in engine_fails(small, bad)
    assert expect in cli_fails(cli, small, "-z", bad)


# ---------------------------------------------------------------------------- prompt and params

def test_prompt_longer_than_context_runs_as_far_as_the_steps(cli, tokenizer_path, small,
                                                            model_path, tmp_path):
    """As run.c: the prompt's first steps tokens are printed (the context bounds the
    steps, never the prompt)."""
    with Engine(small, tokenizer_path) as e:
        short = " ".join(["dragon"] * 100)  # 101+ tokens; the small model holds 32
        want = e.tokenize(short)
        tokens = list(e.tokens(short, Params(seed=1, steps=0)))  # 0: the whole context
        assert [t.id for t in tokens] == want[1:33]
        assert all(t.from_prompt for t in tokens) and e.stats.finish_reason == "length"
        prompt = " ".join(["dragon"] * 300)  # 301+ tokens; stories15M holds 256
        want = e.tokenize(prompt)
    ids = tmp_path / "ids.txt"
    for n, count in [(10, 10), (0, 256), (1000, 256)]:
        r = subprocess.run([str(cli), str(model_path), "-z", str(tokenizer_path), "-n", str(n),
                            "-i", prompt, "-o", str(ids)], capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert [int(x) for x in ids.read_text().split()] == want[1:count + 1]
        text = r.stdout.decode()
        assert text.endswith("\n") and len(text) > count and prompt.startswith(text[:-1])


def test_prompt_too_long_to_encode(small, tokenizer_path):
    """Any prompt is encoded whole (in n log n merges), within the memory limit."""
    huge = "x" * 100_000
    with Engine(small, tokenizer_path) as e:
        assert len(list(e.tokens(huge, Params(seed=1)))) == 32
    tight = Params(seed=1, mem_limit=4 << 20)  # the small model's buffers take 2.5 MB
    with Engine(small, tokenizer_path, tight) as e:
        assert len(list(e.tokens("Once", tight))) == 32
        for call in (lambda: e.tokens(huge, tight), lambda: e.tokenize(huge)):
            with pytest.raises(EngineError, match="100000 bytes needs 8 MiB to encode"):
                call()


@pytest.mark.parametrize("raw", [b"\xff", b"abc\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf5\x80\x80\x80",
                                 b"ok \x80 no"])
def test_invalid_utf8_prompt(raw, cli, tokenizer_path, small):
    assert "not valid UTF-8" in engine_fails(small, tokenizer_path, prompt=raw)
    assert "not valid UTF-8" in cli_fails(cli, small, "-z", tokenizer_path, "-i", raw)


@pytest.mark.parametrize("flag,value,expect", [
    ("-t", "-0.5", "temperature"), ("-t", "nan", "temperature"), ("-t", "abc", "bad value"),
    ("-p", "-0.1", "top-p"), ("-p", "1.5", "top-p"), ("-n", "-1", "steps"),
    ("-s", "12x", "bad value"), ("-m", "chat", "bad value"), ("-q", "1", "unknown flag"),
])
def test_bad_cli_values(flag, value, expect, cli, tokenizer_path, small):
    assert expect in cli_fails(cli, small, "-z", tokenizer_path, flag, value)


@pytest.mark.parametrize("params,expect", [
    (Params(temperature=-0.5, seed=1), "temperature"),
    (Params(temperature=float("inf"), seed=1), "temperature"),
    (Params(topp=-0.1, seed=1), "top-p"),
    (Params(topp=1.01, seed=1), "top-p"),
    (Params(steps=-1, seed=1), "steps"),
])
def test_bad_params(params, expect, tokenizer_path, small):
    assert expect in engine_fails(small, tokenizer_path, params)


def test_python_value_errors(tokenizer_path, small):
    with pytest.raises(ValueError, match="NUL"):
        with Engine(small, tokenizer_path) as e:
            e.tokens("a\0b")
    with pytest.raises(ValueError, match="kernels"):
        Engine(small, tokenizer_path, Params(kernels="fast"))
    with pytest.raises(ValueError, match="seed"):
        Engine(small, tokenizer_path, Params(seed=-1))


# ---------------------------------------------------------------------------- hostile numbers

def _weights(path, header: Header, fill) -> "os.PathLike[str]":
    """A checkpoint of this header whose weights are fill(n) (n floats)."""
    path.write_bytes(header.pack() + np.asarray(fill(header.n_floats()), "<f4").tobytes())
    return path


def _random(n, scale=0.2):
    return np.random.default_rng(0).standard_normal(n) * scale


def _with(value, at):
    def fill(n):
        w = _random(n)
        w[at] = value
        return w
    return fill


NUMERIC = {
    "NaN everywhere": lambda n: np.full(n, np.nan),
    "one NaN in the embedding of BOS": _with(np.nan, slice(16, 17)),
    "+Inf in the first attention norm": _with(np.inf, slice(32000 * 16, 32000 * 16 + 1)),
    "-Inf weights": _with(-np.inf, slice(32000 * 16, None)),
    "weights that overflow": _with(3e38, slice(32000 * 16, None)),
}


@pytest.mark.parametrize("name", NUMERIC)
@pytest.mark.parametrize("params", [Params(seed=1), Params(seed=1, temperature=0.0),
                                    Params(seed=1, topp=1.0)], ids=["top-p", "greedy", "all"])
def test_non_finite_weights(name, params, cli, tmp_path, tokenizer_path):
    bad = _weights(tmp_path / "bad.bin", Header(), NUMERIC[name])
    with Engine(bad, tokenizer_path, params) as e:
        with pytest.raises(EngineError, match="not finite or its activations overflow") as exc:
            list(e.tokens("Once"))
        assert exc.value.status_name == "not a finite number"
        with pytest.raises(EngineError, match="not finite"):
            e.score(e.tokenize("Once upon a time"))
    argv = ["-t", str(params.temperature), "-p", str(params.topp), "-s", "1", "-i", "Once"]
    assert "not finite" in cli_fails(cli, bad, "-z", tokenizer_path, *argv)


def test_temperature_too_small_for_the_logits(small, tokenizer_path):
    with Engine(small, tokenizer_path) as e:
        with pytest.raises(EngineError, match="temperature 1.4013e-45 leaves no finite"):
            list(e.tokens("Once", Params(seed=1, temperature=1e-45)))
        assert len(e.score(e.tokenize("Once upon"))) == 2  # scoring has no temperature


def test_flat_distribution_with_a_tiny_top_p(tmp_path, cli, tokenizer_path):
    """All-zero weights: every token equally likely, and top-p below 1 / vocab leaves
    none at run.c's cutoff (where run.c reads before its array). The nucleus is the
    likeliest token: the lowest id among the tied ones."""
    flat = _weights(tmp_path / "flat.bin", Header(), np.zeros)
    with Engine(flat, tokenizer_path) as e:
        tokens = list(e.tokens(None, Params(seed=1, topp=1e-6)))
    assert [t.id for t in tokens] == [0] * 32 and e.stats.finish_reason == "length"
    r = subprocess.run([str(cli), str(flat), "-z", str(tokenizer_path), "-p", "1e-6", "-s", "1"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout == b"<unk>" * 32 + b"\n"


# ---------------------------------------------------------------------------- memory

def _kv_bytes(h: Header) -> int:
    return 2 * h.n_layers * h.seq_len * h.n_kv_heads * (h.dim // h.n_heads) * 4


def test_header_asking_for_more_than_the_machine(cli, tmp_path, tokenizer_path):
    """1024 layers of width 16 and a context of 2^18: a 10 MB file whose KV cache is
    32 GiB (2^20 and 128 GiB, in 16 MB, on a machine with more RAM)."""
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    sizes = [Header(dim=16, hidden_dim=8, n_layers=1024, n_heads=8, n_kv_heads=8, seq_len=s)
             for s in (1 << 18, 1 << 20)]
    greedy_header = next((h for h in sizes if _kv_bytes(h) > ram), None)
    if greedy_header is None:
        pytest.skip("this machine has more than 128 GiB of RAM")
    greedy = write_model(tmp_path / "greedy.bin", greedy_header)
    assert greedy.stat().st_size < 20 << 20
    assert "memory limit" in cli_fails(cli, greedy, "-z", tokenizer_path)
    with pytest.raises(EngineError, match="KV cache and activations need") as exc:
        Engine(greedy, tokenizer_path)
    assert exc.value.status_name == "out of memory"


def test_memory_limit_parameter(tmp_path, tokenizer_path, small):
    # the small model's packed weights and buffers take about 2.2 MB
    with Engine(small, tokenizer_path, Params(mem_limit=64 << 20)) as e:
        assert len(list(e.tokens("Once", Params(seed=1, steps=8, mem_limit=64 << 20)))) == 8
        with pytest.raises(ValueError, match="memory limit"):
            e.tokens("Once", Params(mem_limit=32 << 20))
    for limit in (100_000, 10_000):  # below the sampler's 256 kB
        with pytest.raises(EngineError, match="memory limit") as exc:
            Engine(small, tokenizer_path, Params(mem_limit=limit))
        assert exc.value.status_name == "out of memory"
    with pytest.raises(ValueError, match="mem_limit"):
        Engine(small, tokenizer_path, Params(mem_limit=-1))
