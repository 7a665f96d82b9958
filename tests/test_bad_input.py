"""Bad input: every case gives a clear error (non-zero exit in the CLI, EngineError in
Python) and never a crash."""
from __future__ import annotations

import struct
import subprocess

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

def test_prompt_longer_than_context(cli, tokenizer_path, small, model_path):
    long_prompt = " ".join(["dragon"] * 40)  # 41+ tokens; the small model holds 32
    assert "context holds 32" in engine_fails(small, tokenizer_path, prompt=long_prompt)
    assert "context holds 256" in cli_fails(cli, model_path, "-z", tokenizer_path,
                                            "-i", " ".join(["dragon"] * 300))
    huge = "x" * 100_000  # refused before encoding, whatever its length
    assert "cannot fit" in engine_fails(small, tokenizer_path, prompt=huge)


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
