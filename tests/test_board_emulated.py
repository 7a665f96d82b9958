"""The board bundle on an emulated riscv64 Linux: installed into a Debian trixie userland
(tools/riscv/userland.sh) by install.sh, its board daemon tells a story to a voice host
on the x86 side over loopback, and what it tells equals the x86 build's story.

Every riscv64 program runs under qemu-user with the userland as its root (-L), the
Python one with the userland's python3 and the bundle's libstorybot.so in ABI mode.
Stories are compared exactly, each against a build of the same kernels on the same
C library: the daemon's glibc rv64gc library against x86's generic kernels, the glibc
C906 library against x86's vector kernels (both sum the int8 products in the same
order), and the musl programs against each other (musl's libm rounds differently
from glibc's, so a musl story is not a glibc story).
"""
from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest_audio import joe_synthesizer
from test_install import board_bundle, need, userland  # noqa: F401  (board_bundle: fixture)
from test_voicehost import wav_seconds

from robot import link, seal
from robot.dev import bench, bundle, memory, quantize
from robot.engine import Engine, Params
from robot.story import Story, is_complete
from robot.voicehost import VoiceHost, VoiceHostSettings
from robot.wordfilter import WordFilter

pytestmark = pytest.mark.slow  # builds the board bundle and runs it under qemu

STEPS = 48
PROMPT = "Once upon a time"
TOLD = "a little robot who loves the moon"


@pytest.fixture(scope="module")
def root() -> Path:
    need(shutil.which("qemu-riscv64-static") is not None, "qemu-user-static")
    return userland()


@pytest.fixture(scope="module")
def release(board_bundle, root):  # noqa: F811
    """The bundle installed into the userland by install.sh, its checks run under qemu.

    install.sh runs on the host with --root (qemu-user cannot run the userland's shell:
    each program it starts would need binfmt_misc); the prefix is this run's own, so
    test runs at the same time do not share one.
    """
    prefix = f"/opt/storybot-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        ["busybox", "sh", str(board_bundle.directory / "install.sh"), "--root", str(root),
         "--prefix", prefix, "--no-service", "--emulator", f"qemu-riscv64-static -L {root}"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "storybot generate (lib/glibc-rv64gc, ABI mode) told: Once" in proc.stdout
    yield (root / prefix.lstrip("/") / "current").resolve()
    shutil.rmtree(root / prefix.lstrip("/"))


def x86_cli(cli, model: Path, tok: Path, kernels: str, steps: int, prompt: str,
            kv: str = "auto") -> bytes:
    return subprocess.run([str(cli), str(model), "-z", str(tok), "-t", "0", "-n", str(steps),
                           "-k", kernels, "-c", kv, "-i", prompt], capture_output=True,
                          check=True).stdout


def riscv_generate(qemu: list[str], root: Path, env: dict, model: Path, steps: int) -> bytes:
    """`python3 -m robot.cli generate` of the userland's python3 under qemu."""
    proc = subprocess.run([*qemu, str(root / "usr/bin/python3"), "-m", "robot.cli", "generate",
                           str(model), "-z", str(model.parent / "tokenizer.bin"), "-t", "0",
                           "-n", str(steps), "-i", PROMPT], env=env, cwd=model.parent,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def test_the_bundle_says_what_it_holds_and_needs(board_bundle):  # noqa: F811
    d = board_bundle.directory
    for rel in ("install.sh", "MANIFEST", "BUNDLE.txt", "VERSION", "storybot.env",
                "bin/storybot", "bin/storybot-run.rv64gc", "bin/storybot-run.c906",
                "lib/musl-rv64gc/libstorybot.so", "lib/musl-c906/libstorybot.so",
                "lib/glibc-rv64gc/libstorybot.so", "lib/glibc-c906/libstorybot.so",
                "python/robot/engine.py", "python/robot/storybot.h", "python/robot/_abi_ffi.py",
                f"models/{bundle.MODEL_NAME}", "models/tokenizer.bin", "service/S99storybot"):
        assert (d / rel).is_file(), rel
    assert not list(d.rglob("_native*")) and not list(d.rglob("__pycache__"))
    listed = {line.split("  ", 1)[1] for line in (d / "MANIFEST").read_text().splitlines()}
    present = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert listed == present - {"MANIFEST"}
    m = board_bundle.measurements
    # the model is mapped and every token reads all of it, but for its classifier, which
    # a draft stands in for: that is read a few blocks a token, not mapped
    path = d / "models" / bundle.MODEL_NAME
    classifier_mb = quantize.classifier_read_by_blocks(path) / 2**20
    model_mb = path.stat().st_size / 2**20 - classifier_mb
    assert classifier_mb > 5
    for mapped, peak in ((m.cli_model_mb, m.cli_peak_mb), (m.daemon_model_mb, m.daemon_peak_mb)):
        assert 0.95 * model_mb < mapped < model_mb + 0.5 * classifier_mb and peak > mapped
    assert m.daemon_peak_mb > m.daemon_model_mb + 5
    assert m.daemon_sentences > 0
    assert all(m.insns_per_token[rel] > 0 for rel in bundle.COUNTED)
    text = (d / "BUNDLE.txt").read_text()
    assert f"peak {m.daemon_peak_mb:.1f} MiB" in text and "MB unpacked" in text
    assert board_bundle.tarball.stat().st_size < 0.9 * sum(p.stat().st_size for p in
                                                           d.rglob("*") if p.is_file())


def test_c906_programs_linked_with_musl_tell_the_rv64gc_story(board_bundle):  # noqa: F811
    """GCC 14's objects on zig's musl: with the generic kernels, the very story of the
    zig-compiled rv64gc build; with the vector kernels, a story too."""
    env = bench.riscv_env()
    d = board_bundle.directory
    story = [str(d / "models" / bundle.MODEL_NAME), "-z", str(d / "models/tokenizer.bin"),
             "-s", "7", "-n", str(STEPS), "-i", PROMPT]
    c906 = [*shlex.split(env["QEMU_C906"]), str(d / "bin/storybot-run.c906")]
    rv64gc = subprocess.run(["qemu-riscv64-static", str(d / "bin/storybot-run.rv64gc"), *story],
                            capture_output=True, check=True).stdout
    generic = subprocess.run([*c906, *story, "-k", "generic", "-j", "2"],
                             capture_output=True, check=True).stdout
    vector = subprocess.run([*c906, *story], capture_output=True, check=True).stdout
    assert generic == rv64gc and rv64gc.startswith(PROMPT.encode())
    assert vector.startswith(PROMPT.encode()) and len(vector.split()) > 20


def test_generate_in_abi_mode_tells_the_x86_story(release, root, cli):
    """The installed release, its library found through install.sh's link."""
    model = release / "models" / bundle.MODEL_NAME
    got = riscv_generate(bundle.qemu_user(root), root, bundle.board_env(release), model, STEPS)
    assert got == x86_cli(cli, model, model.parent / "tokenizer.bin", "generic", STEPS, PROMPT)


def test_the_board_loads_its_library_without_cffis_parser(release, root):
    """The bundle's out-of-line ABI module (robot/_abi_ffi.py) replaces parsing the header
    with cffi and pycparser, ~5 MiB of the board daemon (robot/dev/memory.py)."""
    proc = subprocess.run([*bundle.qemu_user(root), str(root / "usr/bin/python3"), "-c",
                           "import sys, robot.engine; print(robot.engine.lib.SB_OK, sorted("
                           "m for m in sys.modules if m.split('.')[0] in ('cffi', 'pycparser')))"],
                          env=bundle.board_env(release), cwd=release, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "[]"]


def test_the_memory_breakdown_accounts_for_the_daemons_steps(board_bundle, root):  # noqa: F811
    """storybot bundle --breakdown's step table: each step's resident set under T-Head's
    qemu, the model's pages arriving with the story, the C906's KV cache in halves."""
    rows = memory.imports(board_bundle.directory, root, 8)
    assert [label for label, _ in rows][-2:] == ["Engine(model, tokenizer)", "a story, 8 positions"]
    totals = [sum(now.values()) for _, now in rows]
    assert totals[0] > 4 * 2**20 and totals == sorted(totals)
    before, after = rows[-2][1], rows[-1][1]
    model = board_bundle.directory / "models" / bundle.MODEL_NAME
    mapped = model.stat().st_size - quantize.classifier_read_by_blocks(model)
    assert 0.95 * mapped < after[bundle.MODEL_NAME] < 1.1 * mapped
    assert before.get(bundle.MODEL_NAME, 0) < 2**20  # mapped, not yet read
    # fp16 KV cache (1.7 MiB) + activations + the tokenizer's (0.6 MiB) and the
    # sampler's (0.25 MiB) tables: 2.5 MiB, where the tokenizer's alone took 1.0 MiB
    assert totals[-2] - totals[-3] < 2.8 * 2**20


def test_the_c906_library_tells_the_x86_vector_story(release, root, cli):
    need("avx2" in Path("/proc/cpuinfo").read_text(), "an AVX2 host (x86's int8 vector kernels)")
    env = bench.riscv_env()
    model = release / "models" / bundle.MODEL_NAME
    lib = release / "lib" / "glibc-c906" / "libstorybot.so"
    qemu = [env["RV_XUANTIE_QEMU"], "-cpu", "c906fdv", "-L", str(root)]
    got = riscv_generate(qemu, root, bundle.board_env(release, lib), model, 24)
    # both keep a quantized model's KV cache in fp16, converted in vector instructions,
    # and fuse each product of the attention into its sum as the portable kernels do
    assert got == x86_cli(cli, model, model.parent / "tokenizer.bin", "auto", 24, PROMPT, "fp16")


class Recording:
    """The real Piper voice, noting each sentence it is asked to say."""

    def __init__(self):
        self.voice = joe_synthesizer()
        self.sample_rate = self.voice.sample_rate
        self.said: list[str] = []

    def synthesize(self, text, voice=None):
        self.said.append(text)
        return self.voice.synthesize(text)


async def ask_for(control: str, prompt: str) -> list:
    """What storybot ask sees: story-start, the sentences, story-end."""
    host, port = link.parse_address(control)
    client = link.BoundedTcpClient(host, port, link.LinkSettings())
    await client.connect()
    conn = link.Link(client, link.LinkSettings(), "board")
    events = []

    async def handle(event):
        events.append(event)
        return event.type not in (link.STORY_END, link.ERROR)

    try:
        await conn.send(link.Event(link.STORY_REQUEST, {"text": prompt}))
        await asyncio.wait_for(conn.run(handle), 600)
    finally:
        await client.disconnect()
    return events


@pytest.mark.asyncio
async def test_the_board_daemon_tells_the_voice_host_the_x86_story(release, root, cli, tmp_path):
    synth = Recording()
    port = bundle.free_port()
    secret = seal.new_secret()
    seal.save(tmp_path / "pairing.key", secret)  # the board reads it; the host is given it
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=port, wav_dir=str(tmp_path)), synth,
                     secret=secret)
    host_task = asyncio.create_task(host.run())
    await asyncio.wait_for(host.server.listening.wait(), 10)
    control = f"127.0.0.1:{bundle.free_port()}"
    daemon = bundle.Daemon(bundle.serve_argv(root, control, "--voice-host", f"127.0.0.1:{port}",
                                             "--steps", str(STEPS), "--temperature", "0",
                                             "--pairing", str(tmp_path / "pairing.key")),
                           bundle.board_env(release), cwd=tmp_path)
    try:
        await asyncio.to_thread(daemon.wait_for, "Ready:", 300)
        await asyncio.to_thread(daemon.wait_for, f"Connected to 127.0.0.1:{port} (paired", 60)
        events = await ask_for(control, TOLD)
        await asyncio.to_thread(daemon.wait_for, "State: telling -> idle", 60)
    finally:
        status = await asyncio.to_thread(daemon.stop)
        host_task.cancel()
        await asyncio.gather(host_task, return_exceptions=True)
    assert status == 0, daemon.tail()  # SIGTERM: a clean exit, as systemd expects

    start, *sentences, end = events
    assert start.type == link.STORY_START and end.type == link.STORY_END
    told = [e.data["text"] for e in sentences]
    assert told and synth.said == told  # the voice host said what the board sent
    assert all(is_complete(s) for s in told)
    [wav] = tmp_path.glob("*-story1.wav")
    assert wav_seconds(wav) > 2

    # The same story on x86: robot.story over the native library's generic kernels...
    model = release / "models" / bundle.MODEL_NAME
    params = Params(temperature=0, steps=STEPS, kernels="generic")
    with Engine(model, model.parent / "tokenizer.bin", params) as engine:
        x86 = list(Story(engine, start.data["opening"], params,
                         word_filter=WordFilter.default()).sentences())
    assert told == x86
    # ...which is what the native CLI prints, cut to whole sentences.
    printed = x86_cli(cli, model, model.parent / "tokenizer.bin", "generic", STEPS,
                      start.data["opening"]).decode()
    assert printed.split()[:len(" ".join(told).split())] == " ".join(told).split()
