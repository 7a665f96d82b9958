"""Quantized models: the converter (rounding and GPTQ, widths per matrix, fp32 for
matrices whose inner dimension is not whole groups), the loaders (storybot q8_0 / q4_0 /
mixed, llama2.c ak42), their error messages, the int8 and fp16 kernels of every set this
machine runs against numpy, and the fp16 KV cache (the kernels' native self-tests:
test_kernels.py)."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from modelgen import Header, write_model
from quantgen import ak42_header, write_ak42
from robot.dev import quantize as Q
from robot.engine import Engine, EngineError, Params

SMALL = Header(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, seq_len=32)
GROUP = Q.GROUP


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random fp32 checkpoint and its three quantized versions."""
    d = tmp_path_factory.mktemp("small")
    src = write_model(d / "small.bin", SMALL, seed=3)
    out = {"fp32": src}
    for fmt in ("q8_0", "q4_0"):
        Q.convert(src, d / f"small.{fmt}.bin", fmt, show_progress=False)
        out[fmt] = d / f"small.{fmt}.bin"
    out["ak42"] = write_ak42(src, d / "small.ak42.bin", group_size=32)
    return out


@pytest.fixture(scope="module")
def real(tmp_path_factory, model_path):
    """stories15M in every quantized format."""
    d = tmp_path_factory.mktemp("real")
    out = {"fp32": model_path}
    for fmt in ("q8_0", "q4_0"):
        Q.convert(model_path, d / f"stories15M.{fmt}.bin", fmt, show_progress=False)
        out[fmt] = d / f"stories15M.{fmt}.bin"
    out["q8_0g"] = d / "stories15M.q8_0g.bin"  # the classifier in groups, as the layers
    Q.convert(model_path, out["q8_0g"], "q8_0", bits="embedding=8", show_progress=False)
    out["ak42"] = write_ak42(model_path, d / "stories15M.ak42.bin")
    return out


def open_error(path, tokenizer_path) -> EngineError:
    with pytest.raises(EngineError) as e:
        Engine(path, tokenizer_path)
    return e.value


# ----------------------------------------------------------------------------
# converter

@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_round_trip_error_is_bounded(small, fmt):
    """q8_0: within half a step of max|w| / 127 of its group, of its row for the classifier
    (plus the fp16 scale's rounding). q4_0:
    within one step of the coarsest scale it may choose (max|w| / 6.5), and per group
    never worse than the plain symmetric max|w| / 7 quantizer (one of the candidates it
    searches)."""
    c, tensors = Q.read_llama2c(small["fp32"])
    h = Q.read_header(small[fmt])
    assert (h.format, h.group_size, h.config) == (fmt, GROUP, c)
    assert h.source_sha256 == Q.sha256_file(small["fp32"])
    assert h.file_size == small[fmt].stat().st_size
    names = ["token_embedding"] + [f"{w}.{l}" for l in range(c.n_layers)
                                   for w in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")]
    for name in names:
        base, _, layer = name.partition(".")
        w = np.asarray(tensors[base][int(layer)] if layer else tensors[base], np.float32)
        deq = Q.read_matrix(small[fmt], name)
        groups = w.reshape(w.shape[0], -1, GROUP)
        peak = np.abs(groups).max(axis=2)
        if fmt == "q8_0":
            if name == "token_embedding":  # the classifier: one scale per row
                peak = np.repeat(np.abs(w).max(axis=1, keepdims=True), peak.shape[1], axis=1)
            bound = np.repeat(peak / 254 + peak * 2.0**-10, GROUP, axis=1) + 1e-12
            assert np.all(np.abs(w - deq) <= bound), name
            continue
        bound = np.repeat(peak / 6.5, GROUP, axis=1) * (1 + 2.0**-10) + 1e-12
        assert np.all(np.abs(w - deq) <= bound), name
        step = Q.to_f16(np.where(peak > 0, peak / 7, 1).astype(np.float32))[:, :, None]
        symmetric = np.clip(np.rint(groups / step), -7, 7) * step
        err = ((groups - deq.reshape(groups.shape)) ** 2).sum(axis=2)
        assert np.all(err <= ((groups - symmetric) ** 2).sum(axis=2) * (1 + 1e-5) + 1e-12), name


def test_norms_are_copied_exactly(small):
    c, tensors = Q.read_llama2c(small["fp32"])
    raw = small["q8_0"].read_bytes()
    for name, shape, offset, nbytes in Q.layout(c, Q.read_header(small["q8_0"]).types):
        if name.startswith("rms"):
            got = np.frombuffer(raw[offset:offset + nbytes], "<f4").reshape(shape)
            assert np.array_equal(got, tensors[name]), name
        if nbytes:
            assert offset % 64 == 0, name  # every tensor 64-byte aligned for mmap


def test_converter_refuses_what_it_cannot_quantize(tmp_path):
    with pytest.raises(Q.FormatError, match="already quantized"):
        Q.read_llama2c(write_ak42(write_model(tmp_path / "ok.bin", SMALL), tmp_path / "a.bin"))
    for spec, message in (("wq=7", "want KIND="), ("wz=4", "want KIND="),
                          ("embedding", "want KIND=")):
        with pytest.raises(Q.FormatError, match=message):
            Q.convert(tmp_path / "ok.bin", tmp_path / "x.bin", "q8_0", bits=spec)
    with pytest.raises(Q.FormatError, match="unknown format"):
        Q.convert(tmp_path / "ok.bin", tmp_path / "x.bin", "q3")


def test_classifier_scaled_per_row(small, tokenizer_path, tmp_path):
    """q8_0's classifier (here the shared embedding; "embedding=8r") is 8 bits with one
    scale per row (type 80), each weight within half a step of its row's max|w| / 127;
    its logits are close to those of the classifier in groups ("embedding=8") with either
    kernel set (the kernels themselves: test_int8_kernels_match_numpy). Only the
    embedding and the classifier take it, in --bits and in the file."""
    out = small["q8_0"]
    h = Q.read_header(out)
    assert h.format == "q8_0" and h.types[0] == Q.Q8_ROW and set(h.types[1:]) == {Q.Q8}
    groups = tmp_path / "g.bin"
    Q.convert(small["fp32"], groups, "q8_0", bits="embedding=8", show_progress=False)
    assert set(Q.read_header(groups).types) == {Q.Q8} and Q.read_header(groups).format == "q8_0"
    c, tensors = Q.read_llama2c(small["fp32"])
    w = np.asarray(tensors["token_embedding"], np.float32)
    peak = np.abs(w).max(axis=1, keepdims=True)
    err = np.abs(w - Q.read_matrix(out, "token_embedding"))
    assert np.all(err <= peak / 254 + peak * 2.0**-10 + 1e-12)
    assert {n: nb for n, _, _, nb in Q.layout(h.config, h.types)}["token_embedding.scales"] \
        == -(-c.vocab_size // 32) * 32 * 2
    story = [1] + list(range(3, 3 + SMALL.seq_len - 1))
    plain, _ = last_logits(groups, tokenizer_path, story, "generic", False)
    rows = {k: last_logits(out, tokenizer_path, story, k, False)[0] for k in ("generic", "auto")}
    scale = np.abs(plain).max()
    for k in rows:  # a broken scale or block would be off by the logits' own size
        assert np.abs(rows[k] - plain).max() < 0.05 * scale, k
    with pytest.raises(Q.FormatError, match="want KIND="):
        Q.parse_bits("wq=8r", Q.FORMATS["q8_0"][0])
    err = open_error(patched(out, tmp_path / "layer.bin", 256 + 1, bytes([Q.Q8_ROW])), tokenizer_path)
    assert "matrix 1 has type 80" in str(err)


def test_widths_per_matrix(small, tmp_path):
    """--bits sets each kind's width; the file's type table and sizes follow it."""
    out = tmp_path / "mixed.bin"
    Q.convert(small["fp32"], out, "q4_0", bits="embedding=8r,wv=8,w2=8", show_progress=False)
    h = Q.read_header(out)
    assert h.format == "mixed"
    kinds = [n.partition(".")[0] for n, _ in Q.matrix_names(h.config)]
    assert h.types == [Q.Q8_ROW if k == "token_embedding" else 8 if k in ("wv", "w2") else 4
                       for k in kinds]
    for name in ("token_embedding", "wv.1", "wq.1"):
        same = "q8_0" if name[:2] in ("to", "wv") else "q4_0"
        assert np.array_equal(Q.read_matrix(out, name), Q.read_matrix(small[same], name)), name


@pytest.mark.slow  # GPTQ calibration on sampled stories
def test_board_format_is_gptq_at_its_widths(small, tmp_path, tokenizer_path):
    """The named board format: its widths per kind, GPTQ calibrated on the model's own
    samples by default, loaded and scored close to fp32 by the library."""
    out = tmp_path / "board.bin"
    Q.convert(small["fp32"], out, "board", show_progress=False, tokenizer=tokenizer_path)
    h = Q.read_header(out)
    bits, method = Q.FORMATS["board"]
    assert method == "gptq"
    assert h.types == [Q.Q4_ROW if n == "draft" else bits[n.partition(".")[0]]
                       for n, _ in Q.matrix_names(h.config)]
    with Engine(small["fp32"], tokenizer_path) as e:
        tokens = e.tokenize("Once upon a time")
        exact = np.array(e.score(tokens))
    with Engine(out, tokenizer_path) as e:
        assert e.info.format == "storybot-mixed"
        assert np.abs(np.array(e.score(tokens)) - exact).max() < 0.5


def tokenizer512(src: Path, dst: Path) -> Path:
    """The first 512 entries of a llama2.c tokenizer, the last replaced by " " so prompts
    encode (what ../shared/models/README.md suggests for stories260K)."""
    raw = src.read_bytes()
    at, entries = 4, []
    for _ in range(511):
        n = struct.unpack_from("<fi", raw, at)[1]
        entries.append(raw[at:at + 8 + n])
        at += 8 + n
    entries.append(struct.pack("<fi", 0.0, 1) + b" ")
    dst.write_bytes(raw[:4] + b"".join(entries))
    return dst


@pytest.mark.slow  # GPTQ calibration on sampled stories
def test_stories260k_keeps_its_odd_matrices_in_fp32(tmp_path, tokenizer_path):
    """stories260K (hidden 172, not whole groups of 32): w2 stays fp32, the rest is
    quantized, and the model scores text close to fp32 (GPTQ on its own samples too)."""
    src = REPO.parent / "shared" / "models" / "stories260K.bin"
    if not src.exists():
        pytest.skip("stories260K.bin is not in ../shared/models")
    tok = tokenizer512(tokenizer_path, tmp_path / "tok512.bin")
    with Engine(src, tok) as e:
        tokens = e.tokenize("Once upon a time there was a little girl")
        exact = np.array(e.score(tokens))
    for fmt, tol in (("q8_0", 0.02), ("q4_0", 0.3), ("gptq4", 0.3)):
        out = tmp_path / f"260k.{fmt}.bin"
        Q.convert(src, out, fmt, show_progress=False, tokenizer=tok)
        h = Q.read_header(out)
        types = dict(zip((n for n, _ in Q.matrix_names(h.config)), h.types))
        assert {types[f"w2.{l}"] for l in range(5)} == {Q.F32}
        widths = {Q.width(t) for n, t in types.items() if not n.startswith("w2")}
        assert widths == {8 if fmt == "q8_0" else 4}
        assert np.array_equal(Q.read_matrix(out, "w2.3"), Q.read_llama2c(src)[1]["w2"][3])
        with Engine(out, tok) as e:
            got = np.array(e.score(tokens))
            assert abs(got.mean() - exact.mean()) < tol, fmt
            # 30 positions, or fewer where the story ends (q8_0 ends it at 25)
            assert 20 <= len(list(e.tokens("Once", Params(temperature=0, steps=30)))) <= 30


def test_gptq_beats_rounding_on_the_inputs_it_saw(model_path, tokenizer_path):
    """The numpy forward pass matches the engine's log-probabilities, and GPTQ's
    4-bit wo.0 and w2.0 reproduce their outputs on calibration inputs better than
    rounding to nearest does."""
    from robot.dev import calibrate as C

    c, tensors = Q.read_llama2c(model_path)
    stories = C.sample_stories(model_path, tokenizer_path, seeds=[2000, 2001], steps=48)
    inputs = {}
    final = C.forward(c, tensors, stories[0], lambda k, x: inputs.setdefault(k, x))
    logits = final.astype(np.float64) @ np.asarray(tensors["token_embedding"], np.float64).T
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    want = logp[np.arange(len(stories[0]) - 1), stories[0][1:]]
    with Engine(model_path, tokenizer_path) as e:
        np.testing.assert_allclose(e.score(stories[0]), want, atol=2e-3)
    H = C.hessians(c, tensors, stories)
    for name, key in (("wo.0", "att_out.0"), ("w2.0", "ffn_out.0")):
        w = np.asarray(tensors[name[:2]][0], np.float32)
        X = inputs[key]
        errs = []
        for q, sc in (Q.quantize_rtn(w, 4), Q.quantize_gptq(w, H[name], 4)):
            deq = (q.reshape(w.shape[0], -1, GROUP) * sc[:, :, None]).reshape(w.shape)
            errs.append(np.square(X @ (deq - w).T).mean())
        assert errs[1] < 0.8 * errs[0], (name, errs)


def test_quantize_command_prints_progress(tmp_path, small):
    out = tmp_path / "cli.q4.bin"
    r = subprocess.run(["python", "-m", "robot.cli", "quantize", str(small["fp32"]), str(out),
                        "-f", "q4_0"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: q4_0" in r.stdout
    assert out.read_bytes() == small["q4_0"].read_bytes()  # deterministic
    bar = Q.Progress(3, "x", stream=__import__("io").StringIO(), force=True)
    for _ in range(3):
        bar.step("t")
    assert bar.stream.getvalue().endswith("  3/3 t           \n")


# ----------------------------------------------------------------------------
# loading and generating

@pytest.mark.parametrize("fmt,name", [("q8_0", "storybot-q8_0"), ("q4_0", "storybot-q4_0"),
                                      ("q8_0g", "storybot-q8_0"), ("ak42", "llama2c-q8-ak42")])
def test_real_model_tells_a_story(real, tokenizer_path, fmt, name):
    with Engine(real["fp32"], tokenizer_path) as e32:
        ref = [t.id for t in e32.tokens("Once upon a time", Params(temperature=0, steps=40))]
    with Engine(real[fmt], tokenizer_path) as e:
        assert e.info.format == name
        assert e.info.weight_bytes < (18e6 if fmt != "q4_0" else 10e6)
        tokens = list(e.tokens("Once upon a time", Params(temperature=0, steps=40)))
        text = b"".join(t.piece for t in tokens).decode()
    assert text.startswith("Once upon a time") and len(tokens) == 40
    # greedy int8 follows fp32 for a while (q4 drifts sooner)
    same = next((i for i, (a, b) in enumerate(zip(ref, [t.id for t in tokens])) if a != b), 40)
    assert same >= (12 if fmt != "q4_0" else 8)  # 4 of them the prompt


def test_native_cli_runs_quantized(real, cli, tokenizer_path, tmp_path):
    for fmt in ("q8_0", "q4_0", "ak42"):
        r = subprocess.run([str(cli), str(real[fmt]), "-z", str(tokenizer_path), "-t", "0",
                            "-n", "24", "-i", "Once upon a time"], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()
        assert r.stdout.startswith(b"Once upon a time") and b"achieved tok/s" in r.stderr


def test_fixed_seed_is_deterministic(real, tokenizer_path):
    params = Params(temperature=1.0, topp=0.9, seed=42, steps=60)
    runs = []
    for _ in range(2):
        with Engine(real["q8_0"], tokenizer_path) as e:
            runs.append([t.id for t in e.tokens("Lily", params)])
            runs.append([t.id for t in e.tokens("Lily", params)])
    assert all(r == runs[0] for r in runs)


@pytest.mark.parametrize("kv_fp16", [False, True])
def test_generic_and_tuned_kernels_agree(real, tokenizer_path, kv_fp16):
    text = Path(REPO.parent / "shared" / "eval" / "stories15M_samples.txt").read_text()
    story = text.split("<|story|>")[1].strip()
    scores = []
    for kernels in ("generic", "auto"):
        # the same KV cache for both (by default it depends on the set's half conversions)
        with Engine(real["q8_0"], tokenizer_path, Params(kernels=kernels, kv_fp16=kv_fp16)) as e:
            scores.append(np.array(e.score(e.tokenize(story)[:256])))
    # the products agree to rounding (softmax and SwiGLU are the same bits in every set);
    # a rounding can flip an activation's int8 step and move one token's score by 0.1, so
    # compare the mean over a story (~200 tokens; 20 left it at 0.011), not every token
    assert abs(scores[0].mean() - scores[1].mean()) < 0.01


@pytest.mark.parametrize("temperature, topp", [(1.0, 0.9), (1.0, 1.0), (0.8, 0.95)])
def test_quantized_sampling_draws_likely_tokens(real, tokenizer_path, temperature, topp):
    """A quantized model samples with the fast kernels (sb_exact): through top-p and the
    whole distribution, what it draws is what the model, scored with the reference's
    softmax, finds likely (tokens drawn at random would score about -15 each)."""
    with Engine(real["q8_0"], tokenizer_path) as e:
        params = Params(temperature=temperature, topp=topp, seed=11, steps=120)
        ids = [1] + [t.id for t in e.tokens("Once upon a time", params)]
        drawn = np.array(e.score(ids))[len(e.tokenize("Once upon a time")) - 1:]
    assert len(drawn) > 50 and drawn.mean() > -3.0
    if topp < 1.0:  # every nucleus token reaches the cutoff, (1 - topp) / (vocab - 1)
        assert drawn.min() > np.log(0.5 * (1 - topp) / 31999)


def test_fp16_kv_cache_is_close_to_fp32(real, tokenizer_path, engine):
    text = Path(REPO.parent / "shared" / "eval" / "stories15M_samples.txt").read_text()
    story = text.split("<|story|>")[1].strip()
    tokens = engine.tokenize(story)[:256]
    exact = np.array(engine.score(tokens))
    for kernels in ("generic", "auto"):
        with Engine(real["fp32"], tokenizer_path, Params(kv_fp16=True, kernels=kernels)) as e:
            half = np.array(e.score(tokens))
            assert np.abs(half - exact).max() < 0.05
            assert abs(half.mean() - exact.mean()) < 0.002
            with pytest.raises(ValueError, match="KV cache"):
                list(e.tokens("x", Params(kv_fp16=False, kernels=kernels)))
    with Engine(real["q8_0"], tokenizer_path, Params(kv_fp16=True)) as e:
        assert b"".join(t.piece for t in e.tokens("Once", Params(temperature=0, steps=20,
                                                                 kv_fp16=True)))


# ----------------------------------------------------------------------------
# broken files

def patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "ak42"])
def test_truncated_files_are_refused(small, tokenizer_path, tmp_path, fmt):
    raw = small[fmt].read_bytes()
    for n in sorted({0, 3, 4, 27, 28, 100, 255, 256, 257, 1000, len(raw) // 2, len(raw) - 64,
                     len(raw) - 1}):
        path = tmp_path / f"t{n}.bin"
        path.write_bytes(raw[:n])
        err = open_error(path, tokenizer_path)
        assert err.status_name == "bad file format", (n, str(err))
        if n >= 28:
            assert re.search(r"truncated|header implies", str(err)), (n, str(err))
    (tmp_path / "long.bin").write_bytes(raw + b"\0")
    assert "trailing" in str(open_error(tmp_path / "long.bin", tokenizer_path))


def test_bad_headers_are_refused_with_reasons(small, tokenizer_path, tmp_path):
    q8 = small["q8_0"]
    cases = [
        (0, b"SBQX", "out of range"),                       # unknown magic: read as v0
        (4, struct.pack("<I", 1), "version 1; this library reads version 2"),
        (8, b"gpt2\0\0\0\0", "architecture 'gpt2'"),
        (16, struct.pack("<I", 9), "unknown weight format 9"),
        (20, struct.pack("<I", 64), "group size 64"),
        (60, struct.pack("<I", 7), "shared classifier flag"),
        (96, struct.pack("<Q", 123), "header says 123 bytes"),
        (200, b"\1", "reserved header byte 200"),
        (32, struct.pack("<i", 96), "corrupt header"),
        (256, b"\7", "matrix 0 has type 7"),
    ]
    for offset, data, message in cases:
        err = open_error(patched(q8, tmp_path / "bad.bin", offset, data), tokenizer_path)
        assert message in str(err), (message, str(err))
    ak = small["ak42"]
    err = open_error(patched(ak, tmp_path / "v1.bin", 4, struct.pack("<i", 1)), tokenizer_path)
    assert "ak42 version 1 is not supported" in str(err)


def test_ak42_group_sizes(tmp_path, tokenizer_path):
    c = Q.Config(*SMALL.__dict__.values(), shared=True)
    for gs, message in ((0, "group size 0 must be > 0"), (40, "does not divide dim 64"),
                        (16, "not a multiple of 32")):
        path = tmp_path / f"gs{gs}.bin"
        path.write_bytes(ak42_header(c, gs) + b"\0" * 4096)
        assert message in str(open_error(path, tokenizer_path))
    # a group of 64 (two activation groups per weight scale) works
    src = write_model(tmp_path / "s.bin", Header(dim=64, hidden_dim=128, n_heads=4, seq_len=32), seed=5)
    with Engine(write_ak42(src, tmp_path / "g64.bin", 64), tokenizer_path) as e:
        assert len(list(e.tokens("Hi", Params(temperature=0, steps=8)))) == 8


def test_source_mismatch_is_reported_not_fatal(small, tokenizer_path, tmp_path):
    assert Q.source_mismatch(small["q8_0"], small["fp32"]) is None
    other = write_model(tmp_path / "other.bin", SMALL, seed=99)
    warning = Q.source_mismatch(small["q8_0"], other)
    assert warning and "made from a checkpoint with sha256" in warning
    with Engine(small["q8_0"], tokenizer_path) as e:  # loads all the same
        assert e.info.format == "storybot-q8_0"


# ----------------------------------------------------------------------------
# kernels against numpy, every set this machine runs

def kernel_sets():
    from robot._native import ffi, lib

    buf = ffi.new("char[]", 256)
    lib.sb_test_qkernels(buf, 256)
    return ffi.string(buf).decode().split(",")


def _ptr(a, ctype):
    from robot._native import ffi

    return ffi.cast(ctype, ffi.from_buffer(a))


def quantize_ref(x):
    g = x.reshape(-1, GROUP)
    amax = np.abs(g).max(axis=1)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(g * inv[:, None]).astype(np.int8)
    return q.reshape(-1), (amax / np.float32(127)).astype(np.float32)


@pytest.mark.parametrize("kernels", kernel_sets())
@pytest.mark.parametrize("n,d", [(288, 288), (768, 288), (288, 768), (64, 33), (96, 100)])
def test_int8_kernels_match_numpy(kernels, n, d):
    from robot._native import lib

    rng = np.random.default_rng(n * 1000 + d)
    x = rng.standard_normal(n).astype(np.float32)
    x[:5] = 0  # zeros, and below a whole group of zeros
    x[32:64] = 0
    xq, xs, xsum = np.zeros(n, np.int8), np.zeros(n // GROUP, np.float32), np.zeros(n // GROUP, np.int32)
    assert lib.sb_test_quantize_q8(kernels.encode(), _ptr(xq, "int8_t *"), _ptr(xs, "float *"),
                                   _ptr(xsum, "int32_t *"), _ptr(x, "float *"), n) == 0
    q_ref, s_ref = quantize_ref(x)
    assert np.array_equal(xq, q_ref) and np.array_equal(xs, s_ref)
    assert np.array_equal(xsum, q_ref.reshape(-1, GROUP).sum(axis=1, dtype=np.int32))

    w = rng.standard_normal((d, n)).astype(np.float32)
    xg = xq.astype(np.int64).reshape(1, -1, GROUP)
    for typ, fmt in ((1, "q8_0"), (2, "q4_0"), (5, "q5"), (6, "q6"), (3, "rows")):
        gs = 64 if (fmt == "rows" and n % 64 == 0) else GROUP
        if fmt == "rows":
            qr = rng.integers(-127, 128, size=(d, n), dtype=np.int8)
            sr = rng.uniform(1e-3, 1e-1, size=d * n // gs).astype(np.float32)
            data, scales = qr.tobytes(), sr
            qq, srow = qr.astype(np.int64), np.repeat(sr.reshape(d, -1), gs // GROUP, axis=1)
        else:  # fp16 scales
            bits = {"q8_0": Q.Q8, "q4_0": Q.Q4, "q5": Q.Q5, "q6": Q.Q6}[fmt]
            qq, srow = Q.quantize_rtn(w, bits)
            data, sbytes = Q.pack_blocks(qq, srow, bits)
            scales, qq = np.frombuffer(sbytes, np.uint16).copy(), qq.astype(np.int64)
        want = ((qq.reshape(d, -1, GROUP) * xg).sum(axis=2) * srow.astype(np.float64)
                * xs.astype(np.float64)).sum(axis=1)
        out = np.full(d + 1, 7.0, np.float32)
        buf = np.frombuffer(data, np.uint8).copy()
        status = lib.sb_test_qmatvec(kernels.encode(), typ, _ptr(out, "float *"), _ptr(xq, "int8_t *"),
                                     _ptr(xs, "float *"), _ptr(xsum, "int32_t *"), _ptr(buf, "void *"),
                                     _ptr(scales, "void *"), n, d, gs)
        if status == -2 and kernels != "generic":  # no q5/q6 kernel of its own: uses generic's
            continue
        assert status == 0, fmt
        tol = 2e-6 * np.abs(want).max()
        assert np.abs(out[:d] - want).max() <= tol, fmt
        assert out[d] == 7.0  # padding rows are not written

    # SB_Q8_ROW (8): q8_0's blocks, one scale per row, x quantized with one scale for all
    amax = np.abs(x).max()
    xr = np.rint(x * (np.float32(127) / amax)).astype(np.int8)
    xrs = np.full(n // GROUP, amax / np.float32(127), np.float32)
    xrsum = xr.reshape(-1, GROUP).sum(axis=1, dtype=np.int32)
    qq, srow = Q.quantize_rtn(w, Q.Q8_ROW)
    data, sbytes = Q.pack_blocks(qq, srow, Q.Q8_ROW)
    want = (qq.astype(np.int64) @ xr.astype(np.int64)) * srow[:, 0].astype(np.float64) * float(xrs[0])
    out = np.full(d + 1, 7.0, np.float32)
    buf, scales = np.frombuffer(data, np.uint8).copy(), np.frombuffer(sbytes, np.uint16).copy()
    assert lib.sb_test_qmatvec(kernels.encode(), 8, _ptr(out, "float *"), _ptr(xr, "int8_t *"),
                               _ptr(xrs, "float *"), _ptr(xrsum, "int32_t *"), _ptr(buf, "void *"),
                               _ptr(scales, "void *"), n, d, GROUP) == 0
    assert np.abs(out[:d] - want).max() <= 2e-6 * np.abs(want).max() and out[d] == 7.0


@pytest.mark.parametrize("kernels", kernel_sets())
def test_fp16_kernels_match_numpy(kernels):
    from robot._native import lib

    rng = np.random.default_rng(1)
    special = np.array([0, -0.0, 1, -2.5, 65504, 65520, 1e-8, 5.9604645e-8, 6.1035156e-5,
                        1 + 2**-11, 1 + 3 * 2**-11, np.inf, -np.inf], np.float32)
    x = np.concatenate([special, rng.standard_normal(37).astype(np.float32) * 100])
    out = np.zeros(len(x), np.uint16)
    assert lib.sb_test_f16(kernels.encode(), 0, _ptr(out, "float *"), _ptr(x, "float *"),
                           _ptr(out, "void *"), 0, 0, len(x)) == 0
    with np.errstate(over="ignore"):  # 65520 rounds to inf, on purpose
        assert np.array_equal(out, x.astype(np.float16).view(np.uint16))

    hs, seq, n = 48, 40, 37
    kt = rng.standard_normal((hs, seq)).astype(np.float16)
    q = rng.standard_normal(hs).astype(np.float32)
    att = np.zeros(seq, np.float32)
    lib.sb_test_f16(kernels.encode(), 1, _ptr(att, "float *"), _ptr(q, "float *"),
                    _ptr(kt, "void *"), hs, seq, n)
    np.testing.assert_allclose(att[:n], q @ kt.astype(np.float32)[:, :n], rtol=1e-5, atol=1e-5)
    v = rng.standard_normal((seq, 96)).astype(np.float16)
    a = rng.uniform(0, 1, seq).astype(np.float32)
    mixed = np.zeros(hs, np.float32)
    lib.sb_test_f16(kernels.encode(), 2, _ptr(mixed, "float *"), _ptr(a, "float *"),
                    _ptr(v.reshape(-1)[8:], "void *"), hs, 96, n)
    np.testing.assert_allclose(mixed, a[:n] @ v.astype(np.float32)[:n, 8:8 + hs], rtol=1e-5, atol=1e-5)


def test_two_pass_classifier_study_scores_each_way(small, tmp_path):
    """native/bench/twopass (issue 16's study) scores the next token with the full
    classifier, the draft's, and two passes. With the model as its own draft every way is
    the same; with q4_0 drafting for q8_0, re-scoring every row within 12 of the top
    (all of this small model's flat logits) gives the full classifier's perplexity."""
    subprocess.run(["make", "-s", "-C", str(REPO / "native"), "build/twopass"], check=True)
    rng = np.random.default_rng(5)
    tokens = tmp_path / "tokens.bin"
    with open(tokens, "wb") as f:
        for n in (SMALL.seq_len, 9):
            f.write(struct.pack("i", n) + rng.integers(3, 32000, n).astype("<i4").tobytes())

    def study(full, draft):
        out = subprocess.run([str(REPO / "native/build/twopass"), str(full), str(draft),
                              str(tokens)], capture_output=True, text=True, check=True).stdout
        assert f"positions {SMALL.seq_len - 1 + 8}\n" in out
        return [float(p) for p in re.findall(r"ppl (\d+\.\d+)", out)]

    same = study(small["q8_0"], small["q8_0"])
    assert len(same) == 7 and len(set(same)) == 1
    full, draft, *two = study(small["q8_0"], small["q4_0"])
    assert draft != full and two[-1] == full


# ----------------------------------------------------------------------------
# the draft classifier (two passes)

def last_logits(path, tokenizer_path, tokens, kernels="auto", with_draft=True):
    """The library's logits after tokens, and the draft's for the same hidden state."""
    from robot._native import ffi, lib

    p = lib.sb_default_params()
    p.kernels = lib.SB_KERNELS_GENERIC if kernels == "generic" else lib.SB_KERNELS_AUTO
    out, err = ffi.new("sb_context **"), ffi.new("char[]", 256)
    assert lib.sb_open(str(path).encode(), str(tokenizer_path).encode(), ffi.addressof(p), out,
                       err, 256) == 0, ffi.string(err)
    ctx = ffi.gc(out[0], lib.sb_free)
    v = 32000
    logits, draft = np.zeros(v, np.float32), np.zeros(v, np.float32)
    ids = np.asarray(tokens, np.int32)
    status = lib.sb_test_logits(ctx, _ptr(ids, "int *"), len(tokens), _ptr(logits, "float *"),
                                _ptr(draft, "float *") if with_draft else ffi.NULL)
    assert status == 0
    return logits, draft


def drafted_files(src, d, classifier="5"):
    """src with a 5-bit (or other) classifier, without and with a 4-bit draft (rounding to
    nearest)."""
    out = {}
    for name, bits in (("full", f"embedding={classifier}"),
                       ("draft", f"embedding={classifier},draft=4")):
        out[name] = d / f"{name}.bin"
        Q.convert(src, out[name], "q8_0", bits=bits, show_progress=False)
    return out


@pytest.fixture(scope="module")
def drafted(small, tmp_path_factory):
    return drafted_files(small["fp32"], tmp_path_factory.mktemp("draft"))


def test_draft_is_stored_last_and_flagged(drafted, small, tmp_path):
    h = Q.read_header(drafted["draft"])
    assert h.config.draft and not Q.read_header(drafted["full"]).config.draft
    assert [n for n, _ in Q.matrix_names(h.config)][-1] == "draft" and h.types[-1] == Q.Q4_ROW
    assert h.types[:-1] == Q.read_header(drafted["full"]).types
    # the draft is the classifier (here the shared embedding) at 4 bits, one scale a row
    c, tensors = Q.read_llama2c(small["fp32"])
    w = np.asarray(tensors["token_embedding"], np.float32).reshape(c.vocab_size, c.dim)
    q, scales = Q.quantize_rtn(w, Q.Q4_ROW)
    assert scales.shape == (c.vocab_size, 1)
    assert np.array_equal(Q.read_matrix(drafted["draft"], "draft"), q * scales)
    sizes = {n: nb for n, _, _, nb in Q.layout(h.config, h.types)}
    assert sizes["draft.scales"] == -(-c.vocab_size // 32) * 32 * 2
    assert h.file_size == drafted["draft"].stat().st_size
    assert h.format == "mixed"  # the format names the widths of the model, not its draft
    q8 = tmp_path / "q8d.bin"
    Q.convert(small["fp32"], q8, "q8_0", bits="draft=4", show_progress=False)
    assert Q.read_header(q8).format == "q8_0" and Q.read_header(q8).types[-1] == Q.Q4_ROW


def expected_blocks(draft):
    """The row blocks the second pass should re-score (forward.c's rule), and the delta."""
    blocks = np.arange(len(draft)) // 32
    delta = 6.0
    while True:
        near = draft >= draft.max() - delta
        if near.sum() < 256 and len(np.unique(blocks[near])) <= 16:
            return set(np.unique(blocks[near])), delta
        delta /= 2


def check_second_pass(files, tokenizer_path, story, kernels):
    deltas = set()
    for n in range(1, len(story) + 1, 2):
        got, draft = last_logits(files["draft"], tokenizer_path, story[:n], kernels)
        full, _ = last_logits(files["full"], tokenizer_path, story[:n], kernels, False)
        want, delta = expected_blocks(draft)
        deltas.add(delta)
        rows = np.isin(np.arange(len(got)) // 32, sorted(want))
        assert np.array_equal(got[rows], full[rows]), n      # re-scored: the full classifier
        assert np.array_equal(got[~rows], draft[~rows]), n   # the rest: the draft
    return deltas


@pytest.mark.parametrize("kernels", ["generic", "auto"])
def test_second_pass_rescores_the_rows_near_the_draft_top(drafted, tokenizer_path, kernels):
    """Rows in blocks holding a draft logit within 6 of the draft's top get the full
    classifier's logits (bit for bit those of the same file without a draft), the others
    keep the draft's; at most 255 rows in 16 blocks, the delta halving until they fit
    (this random model's flat logits always need it)."""
    rng = np.random.default_rng(11)
    story = [1] + list(rng.integers(3, 32000, SMALL.seq_len - 1))
    assert max(check_second_pass(drafted, tokenizer_path, story, kernels)) < 6


def test_second_pass_on_stories15m(model_path, tokenizer_path, tmp_path):
    """On the real model (a story's first 48 positions) the plain case, delta 6."""
    files = drafted_files(model_path, tmp_path)
    with Engine(files["draft"], tokenizer_path) as e:
        story = e.tokenize("Once upon a time, there was a little girl named Lily. She loved "
                           "to play outside in the park with her friends and her dog.")
    assert 6.0 in check_second_pass(files, tokenizer_path, story, "auto")


def test_second_pass_with_a_classifier_scaled_per_row(small, tokenizer_path, tmp_path):
    """An 8r classifier takes its input quantized as the draft's (one scale), so the second
    pass scores its blocks (one scale a row) from the draft's input: bit for bit the same
    file's logits without a draft."""
    files = drafted_files(small["fp32"], tmp_path, "8r")
    assert Q.read_header(files["draft"]).types[0] == Q.Q8_ROW
    rng = np.random.default_rng(12)
    story = [1] + list(rng.integers(3, 32000, SMALL.seq_len - 1))
    for kernels in ("generic", "auto"):
        check_second_pass(files, tokenizer_path, story, kernels)


def test_draft_headers_are_checked(drafted, tokenizer_path, tmp_path):
    """A draft flag the file does not back up, a draft stored in fp32, or a matrix other
    than the draft with one scale per row, is refused."""
    d = drafted["draft"]
    err = open_error(patched(d, tmp_path / "flag.bin", 104, struct.pack("<I", 2)), tokenizer_path)
    assert "draft classifier flag is 2" in str(err)
    err = open_error(patched(drafted["full"], tmp_path / "noback.bin", 104, struct.pack("<I", 1)),
                     tokenizer_path)
    assert "matrix 15 has type 0" in str(err)  # the table's padding, read as the draft's type
    h = Q.read_header(d)
    table = 256 + len(h.types) - 1
    err = open_error(patched(d, tmp_path / "f32.bin", table, b"\x20"), tokenizer_path)
    assert "draft classifier needs" in str(err)
    # one scale per row is a draft's layout only: its input is quantized for it alone
    err = open_error(patched(d, tmp_path / "rows.bin", 256 + 1, b"\x28"), tokenizer_path)
    assert "matrix 1 has type 40" in str(err)


def mapped_kib(path) -> int:
    """This process's resident KiB of the mapping of path (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_classifier_with_a_draft_is_read_not_mapped(model_path, tokenizer_path, tmp_path):
    """With a draft the classifier's row blocks are read from the file as the second pass
    and the embedding ask for them: after the first token (every layer and the draft
    resident) stories add nothing to the model's mapping, where mapped blocks would add
    most of the classifier's 6 MB over three stories."""
    files = drafted_files(model_path, tmp_path)
    path = files["draft"].resolve()
    with Engine(path, tokenizer_path) as e:
        list(e.tokens("Once", Params(steps=3, seed=1)))
        first = mapped_kib(path)
        for seed in (1, 2, 3):
            assert len(list(e.tokens("Once upon a time", Params(steps=128, seed=seed)))) > 20
        grown = mapped_kib(path) - first
    layers_and_draft = (path.stat().st_size - Q.classifier_read_by_blocks(path)) // 1024
    assert first >= layers_and_draft * 0.9 and grown <= 16, (first, grown)
