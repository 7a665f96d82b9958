"""storybot bundle: the board's software in one checked tarball, cross-built for riscv64.

Layout of storybot-<version>-<id>-riscv64/ and of the .tar.gz beside it, where <id> is
the start of MANIFEST's sha256 (install.sh names the release after it)::

    install.sh                  board/install.sh: check, copy, switch, keep one back
    MANIFEST                    "sha256  path" of every other file (sha256sum -c format)
    BUNDLE.txt                  contents, size, RAM and instruction counts as measured
    VERSION                     storybot's version
    storybot.env                settings: systemd/storybot.env plus the bundle's model
    bin/storybot                board/storybot: python3 -m robot.cli in ABI mode
    bin/storybot-run.rv64gc     static musl (zig cc), scalar: any riscv64 Linux
    bin/storybot-run.c906       static musl (GCC 14 XTheadVector objects, zig's link):
                                the Milk-V Duo's C906
    bin/storybot-bench.*        the same two builds of the benchmark
    lib/musl-rv64gc/            libstorybot.so for a musl Python (buildroot, the stock Duo)
    lib/musl-c906/              ... the same on a C906 (the objects of storybot-run.c906)
    lib/glibc-rv64gc/           ... for a glibc Python (Debian) on any riscv64 (gcc 12)
    lib/glibc-c906/             ... for a glibc Python on a C906 (GCC 14, XTheadVector)
    python/robot/               robot/*.py, data/, storybot.h, and _abi_ffi.py: the header's
                                declarations for cffi's out-of-line ABI mode
    models/                     the board model (GPTQ, 4-8 bits, a draft classifier), tokenizer.bin
    service/                    systemd/'s init script and units

install.sh picks the library by the board's C library and CPU. No compiled cffi
extension is shipped: ABI mode works on any Python that has cffi (its _cffi_backend is
all the board imports of it). musl's libm rounds
some functions differently from glibc's, so a musl build tells a different story than
a glibc build (or llama2.c's run, on glibc) from the same seed; each is deterministic.

The sizes and RAM in BUNDLE.txt are measured on the bundle as built, under qemu-user
(the riscv64 program's own resident pages, see guest_rss; the daemon with the C906
library under T-Head's qemu, as the Duo runs it), and the instruction counts with the
qemu insncount plugin (tools/riscv). `storybot bundle --breakdown DIR` splits the
daemon's memory by mapping and import (robot/dev/memory.py).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, models
from . import bench, quantize

_LOGGER = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# GPTQ with a width per matrix and an 8-bit classifier behind a 4-bit draft (quantize -f
# board): near int8's quality (perplexity 1.005x fp32's; q8_0 1.002x, q4_0 1.12x), the
# fastest C906 model of that quality, and 10.1 MiB resident, which fits beside the daemon
# where q8_0's 15.6 MB does not (README, "Models and what they cost").
MODEL_FORMAT = "board"
MODEL_NAME = f"stories15M.{MODEL_FORMAT}.bin"
PROMPT = "Once upon a time"

# build directory -> (make steps: (compiler variable of tools/riscv/env.sh, targets),
#                    {product: path in the bundle})
BUILDS = {
    # zig links programs statically against musl, and a -shared library against musl's
    # libc.so, which is what a musl system's loader provides.
    "musl-rv64gc": ([("RV_CC_ZIG", ["storybot-run", "storybot-bench", "libstorybot.so"])], {
        "storybot-run": "bin/storybot-run.rv64gc",
        "storybot-bench": "bin/storybot-bench.rv64gc",
        "libstorybot.so": "lib/musl-rv64gc/libstorybot.so"}),
    # GCC 14 is the only compiler here with XTheadVector, and it targets glibc; zig then
    # links its objects against musl (make finds them up to date and only links). On
    # riscv64 both libcs lay out what the library hands them (struct stat, pthread types,
    # errno) alike; tests/test_board_emulated.py checks these programs against the
    # zig-compiled ones. Static musl programs run on any riscv64 Linux, and on the musl
    # board they share the library's libm, so CLI and daemon tell the same story.
    "musl-c906": ([("RV_CC_XTHEAD", ["libstorybot.a"]),
                   ("RV_CC_ZIG", ["storybot-run", "storybot-bench", "libstorybot.so"])], {
        "storybot-run": "bin/storybot-run.c906",
        "storybot-bench": "bin/storybot-bench.c906",
        "libstorybot.so": "lib/musl-c906/libstorybot.so"}),
    "glibc-rv64gc": ([("RV_CC_GCC", ["libstorybot.so"])],
                     {"libstorybot.so": "lib/glibc-rv64gc/libstorybot.so"}),
    "glibc-c906": ([("RV_CC_XTHEAD", ["libstorybot.so"])],
                   {"libstorybot.so": "lib/glibc-c906/libstorybot.so"}),
}

# build of a bench binary -> (emulator variable, plugin variable, INSNCOUNT_VSPEC)
COUNTED = {
    "bin/storybot-bench.rv64gc": ("QEMU_RV", "INSNCOUNT_SO", "1.0"),
    "bin/storybot-bench.c906": ("QEMU_C906", "INSNCOUNT_C906_PLUGIN", "0.7"),
}

# qemu-user gives a 64-bit guest the host's own addresses, where its memory mixes with
# qemu's. Reserving the guest a region of its own (-R) at a fixed base (-B) puts every
# guest page in [base, base + size), so the guest's resident set can be read off qemu's
# /proc/PID/smaps. 4 GiB is far more than a program for a 64 MB board maps.
# The board daemon's library, as install.sh links it on the Duo (glibc: the userland's
# python3 is Debian's; the musl build has the same objects).
DAEMON_LIB = "glibc-c906"
GUEST_BASE = 0x1000_0000_0000
GUEST_SIZE = 0x1_0000_0000


@dataclass
class Measurements:
    """What BUNDLE.txt reports; 0 or empty where it was not measured."""

    cli_peak_mb: float = 0.0
    cli_model_mb: float = 0.0
    daemon_peak_mb: float = 0.0
    daemon_model_mb: float = 0.0
    daemon_idle_mb: float = 0.0
    """After the story, the model loaded, waiting for the next press."""
    daemon_sentences: int = 0
    steps: int = 0
    insns_per_token: dict[str, float] = field(default_factory=dict)
    cycles_per_token: dict[str, float] = field(default_factory=dict)
    count_steps: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Bundle:
    directory: Path
    tarball: Path
    id: str
    """The first 12 hex digits of MANIFEST's sha256."""
    measurements: Measurements


# ---------------------------------------------------------------------------- building

def compile_all(env: dict[str, str]) -> dict[str, Path]:
    """Cross-builds every variant from clean into native/build/bundle/; bundle path -> file."""
    out = {}
    for name, (steps, products) in BUILDS.items():
        build = f"build/bundle/{name}"
        shutil.rmtree(REPO / "native" / build, ignore_errors=True)
        for cc_var, targets in steps:
            _LOGGER.info("building %s: %s with %s", name, ", ".join(targets), cc_var)
            subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "-C", str(REPO / "native"),
                            f"BUILD={build}", f"CC={env[cc_var]}", "AR=riscv64-linux-gnu-ar",
                            *(f"{build}/{t}" for t in targets)], check=True)
        for product, dest in products.items():
            out[dest] = REPO / "native" / build / product
    for dest, path in out.items():
        _check_linkage(dest, path)
    return out


def _check_linkage(dest: str, path: Path) -> None:
    """A program must be static (one build for every board); a musl library may need
    nothing but libc.so, which musl's loader is."""
    text = subprocess.run(["riscv64-linux-gnu-readelf", "-ld", str(path)], capture_output=True,
                          text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\).*\[(.+)\]", text)
    if dest.startswith("bin/") and ("INTERP" in text or needed):
        raise RuntimeError(f"{path} is not a static program: {needed}")
    if "musl" in dest and needed != ["libc.so"]:
        raise RuntimeError(f"{path} needs {needed}, not just musl's libc.so")


def stage(directory: Path, built: dict[str, Path], model: Path, tokenizer: Path) -> None:
    """Fills directory with everything but BUNDLE.txt and MANIFEST."""
    for dest, path in built.items():
        target = directory / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        # the debug symbols stay in native/build/bundle
        subprocess.run(["riscv64-linux-gnu-strip", "--strip-unneeded", "-o", str(target),
                        str(path)], check=True)
    _copy(REPO / "board" / "install.sh", directory / "install.sh", 0o755)
    _copy(REPO / "board" / "storybot", directory / "bin" / "storybot", 0o755)
    (directory / "VERSION").write_text(f"{__version__}\n")

    package = directory / "python" / "robot"
    for src in sorted((REPO / "robot").glob("*.py")):
        if src.name != "_build.py":  # the API-mode build script: needs a compiler and the sources
            _copy(src, package / src.name)
    for src in sorted((REPO / "robot" / "data").iterdir()):
        if src.name != "story.lm":  # the voice host's recognizer's (1 MB), not the board's
            _copy(src, package / "data" / src.name)
    _copy(REPO / "native" / "include" / "storybot.h", package / "storybot.h")
    write_abi_module(REPO / "native" / "include" / "storybot.h", package / "_abi_ffi.py")

    (directory / "models").mkdir(parents=True, exist_ok=True)
    _copy(quantized(model), directory / "models" / MODEL_NAME)
    _copy(tokenizer, directory / "models" / "tokenizer.bin")

    for name in ("S99storybot", "storybot-board.service", "storybot-voice.service", "README.md"):
        src = REPO / "systemd" / name
        if src.is_file():
            _copy(src, directory / "service" / name, 0o755 if name.startswith("S99") else 0o644)
    settings = REPO / "systemd" / "storybot.env"
    base = settings.read_text() if settings.is_file() else ""
    # later assignments win, both for systemd's EnvironmentFile= and for sh's "."
    (directory / "storybot.env").write_text(
        base + "\n# --- this bundle ----------------------------------------------------------\n"
        "# The 4-bit model shipped in PREFIX/current/models, which bin/storybot searches first.\n"
        f"STORYBOT_MODEL={MODEL_NAME}\n")


def write_abi_module(header: Path, dest: Path) -> None:
    """robot/_abi_ffi.py: the header's declarations as cffi's out-of-line ABI mode keeps
    them (a type table for _cffi_backend), which robot._abi loads instead of parsing the
    header with cffi and pycparser on the board: 5 MiB less (robot/dev/memory.py)."""
    from cffi import FFI

    from .._cdef import cdef_from_header

    ffi = FFI()
    ffi.cdef(cdef_from_header(header))
    ffi.set_source("robot._abi_ffi", None)
    code = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()):  # cffi says "generating <file>"
        ffi.emit_python_code(code)
    dest.write_text(code.getvalue())


def quantized(model: Path) -> Path:
    """The board's model made from model: GPTQ calibration takes minutes, so the file is
    kept in the cache under a key of its source and of the converter's code."""
    key = hashlib.sha256(_sha256(model).encode() + MODEL_FORMAT.encode())
    for src in ("quantize.py", "calibrate.py"):
        key.update((Path(__file__).parent / src).read_bytes())
    cached = models.cache_dir().parent / "quantized" / f"{MODEL_NAME}.{key.hexdigest()[:16]}"
    if not cached.is_file():
        _LOGGER.info("quantizing %s to %s (kept as %s)", model, MODEL_FORMAT, cached)
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_name(cached.name + f".{os.getpid()}.part")
        quantize.convert(model, part, MODEL_FORMAT, show_progress=False)
        os.replace(part, cached)
    return cached


def _copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def write_manifest(directory: Path) -> str:
    """Writes MANIFEST; returns its sha256."""
    lines = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != "MANIFEST":
            lines.append(f"{_sha256(path)}  {rel}\n")
    manifest = directory / "MANIFEST"
    manifest.write_text("".join(lines))
    return _sha256(manifest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_tarball(directory: Path, tarball: Path) -> None:
    import tarfile  # here: slow to import on a C906, and only this step needs it

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    tmp = tarball.with_name(tarball.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=9) as tar:
        tar.add(directory, arcname=directory.name, filter=owned_by_root)
    tmp.replace(tarball)


# ---------------------------------------------------------------------------- measuring

def guest_rss(pid: int, model_name: str = MODEL_NAME) -> tuple[int, int]:
    """(resident bytes, of which the model's pages) of a program run by qemu-user with
    -B GUEST_BASE -R GUEST_SIZE: the pages qemu's own process has inside that region."""
    total = model = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's header line
                start = int(fields[0].split("-")[0], 16)
                inside = GUEST_BASE <= start < GUEST_BASE + GUEST_SIZE
                is_model = len(fields) >= 6 and fields[-1].endswith(model_name)
            elif fields[0] == "Rss:" and inside:
                kb = int(fields[1])
                total += kb
                model += kb if is_model else 0
    return total * 1024, model * 1024


class _Sampler:
    """Samples a qemu-user process's guest RSS every 0.1 s, keeping the peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = (0, 0)
        self.last = (0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.last = guest_rss(self.pid)
            except (OSError, ValueError):  # the process is gone
                return
            self.peak = max(self.peak, self.last)
            self._stop.wait(0.1)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak


def qemu_user(root: Path | None = None, c906: bool = False) -> list[str]:
    """qemu-user for riscv64 with the guest in a region of its own (see GUEST_BASE);
    c906: T-Head's qemu (tools/riscv), which runs XTheadVector code, as a C906."""
    if c906:
        qemu = bench.riscv_env()["RV_XUANTIE_QEMU"]
        argv = [qemu, "-cpu", "c906fdv", "-B", hex(GUEST_BASE), "-R", hex(GUEST_SIZE)]
        return argv + (["-L", str(root)] if root else [])
    qemu = shutil.which("qemu-riscv64-static") or shutil.which("qemu-riscv64")
    if qemu is None:
        raise RuntimeError("no qemu-riscv64-static (apt install qemu-user-static)")
    argv = [qemu, "-B", hex(GUEST_BASE), "-R", hex(GUEST_SIZE)]
    return argv + (["-L", str(root)] if root else [])


def measure_cli(directory: Path, steps: int) -> tuple[int, int]:
    """Peak guest RSS of the rv64gc CLI telling a story of `steps` positions."""
    models_dir = directory / "models"
    proc = subprocess.Popen([*qemu_user(), str(directory / "bin" / "storybot-run.rv64gc"),
                             str(models_dir / MODEL_NAME), "-z", str(models_dir / "tokenizer.bin"),
                             "-n", str(steps), "-s", "1", "-i", PROMPT],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = _Sampler(proc.pid)
    _, err = proc.communicate()
    peak = sampler.stop()
    if proc.returncode:
        raise RuntimeError(f"storybot-run under qemu failed: {err.decode(errors='replace')}")
    return peak


def board_env(release: Path, library: Path | None = None) -> dict[str, str]:
    """What bin/storybot gives the daemon of a release. An installed release finds its
    library through the link install.sh made; a bundle directory is told which one."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "PYTHONPATH": str(release / "python"),
           "PYTHONSAFEPATH": "1", "STORYBOT_ABI": "1", "STORYBOT_MODELS": str(release / "models"),
           # bytecode goes to a tree of its own: a bundle stays as its MANIFEST lists it
           "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "storybot-pycache")}
    if library is not None:
        env["STORYBOT_LIB"] = str(library)
    return env


class Daemon:
    """storybot serve under qemu-user with a userland's python3; its log collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, name="daemon-log", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._changed:
                self.log.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a log line contains text; raises if the daemon dies or time runs out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.log):
                left = deadline - time.monotonic()
                if self.proc.poll() is not None or left <= 0:
                    raise RuntimeError(f"storybot serve: no {text!r} in its log "
                                       f"(exit {self.proc.poll()}):\n{self.tail()}")
                self._changed.wait(min(left, 1.0))

    def tail(self) -> str:
        return "\n".join(self.log[-30:])

    def stop(self) -> int:
        """SIGTERM, as systemd or S99storybot would; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def serve_argv(root: Path, control: str, *extra: str, c906: bool = False,
               model: str = MODEL_NAME) -> list[str]:
    """storybot serve with the userland's python3, as bin/storybot would run it."""
    return [*qemu_user(root, c906), str(root / "usr" / "bin" / "python3"), "-m", "robot.cli",
            "serve", "--control", control, "--button", "none", "--model", model, *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon_env(directory: Path, root: Path) -> dict[str, str]:
    """The environment of the measured daemon, its modules compiled to bytecode first, as
    install.sh compiles them on the board (a run that compiles holds the compiler's
    memory too). The Duo's daemon runs the C906 library (lib/DAEMON_LIB: vector kernels,
    and with them the fp16 KV cache of quantized models), so it is measured under
    T-Head's qemu with that library."""
    env = board_env(directory, directory / "lib" / DAEMON_LIB / "libstorybot.so")
    subprocess.run([*qemu_user(root, c906=True), str(root / "usr" / "bin" / "python3"), "-c",
                    "import robot.board, robot.cli, robot.service"],
                   env=env, cwd=directory, check=True)
    return env


def measure_daemon(directory: Path, root: Path, steps: int) -> tuple[tuple[int, int], int, int]:
    """((peak guest RSS, of which model), RSS once idle again, sentences) of storybot serve
    telling one story of `steps` positions, asked for on its control port."""
    from ..ask import ask

    env = daemon_env(directory, root)
    control = f"127.0.0.1:{free_port()}"
    daemon = Daemon(serve_argv(root, control, "--steps", str(steps), c906=True), env,
                    cwd=directory)
    sampler = _Sampler(daemon.proc.pid)
    try:
        daemon.wait_for("Ready:", timeout=300)
        told = io.StringIO()
        code = asyncio.run(ask(control, "a robot who tells stories", out=told))
        if code != 0:
            raise RuntimeError(f"the board did not finish the story:\n{daemon.tail()}")
        time.sleep(1.0)  # settled: the story's buffers freed, the model still mapped
        idle = sampler.last[0]
    finally:
        status = daemon.stop()
        peak = sampler.stop()
        for cache in (directory / "python").rglob("__pycache__"):
            shutil.rmtree(cache)
    if status != 0:
        raise RuntimeError(f"storybot serve exited with {status}:\n{daemon.tail()}")
    return peak, idle, len(told.getvalue().splitlines())


def count_instructions(directory: Path, env: dict[str, str], steps: int) -> dict[str, tuple]:
    """bench path -> (instructions, estimated C906 cycles) per generated token, medians
    over the generated positions among the story's first `steps` (bench.STORY's prompt
    and sampling), counted by the qemu insncount plugin between the bench's marks."""
    counts = {}
    for rel, (emu_var, plugin_var, vspec) in COUNTED.items():
        spans, _, _ = bench._count(shlex.split(env[emu_var]), env[plugin_var], vspec,
                                   directory / rel, directory / "models" / MODEL_NAME,
                                   directory / "models" / "tokenizer.bin", steps)
        counts[rel] = (statistics.median(s[0] for s in spans),
                       statistics.median(s[1] for s in spans))
    return counts


def measure(directory: Path, env: dict[str, str], userland: Path | None, steps: int,
            count_steps: int) -> Measurements:
    m = Measurements(steps=steps, count_steps=count_steps)
    mb = 1 / 2**20
    _LOGGER.info("measuring storybot-run.rv64gc's RSS under qemu (%d positions)", steps)
    peak, model = measure_cli(directory, steps)
    m.cli_peak_mb, m.cli_model_mb = peak * mb, model * mb
    if userland is not None:
        _LOGGER.info("measuring storybot serve's RSS under qemu with %s", userland)
        (peak, model), idle, m.daemon_sentences = measure_daemon(directory, userland, steps)
        m.daemon_peak_mb, m.daemon_model_mb, m.daemon_idle_mb = peak * mb, model * mb, idle * mb
    else:
        m.notes.append("storybot serve was not measured: no riscv64 userland "
                       "(bash tools/riscv/userland.sh)")
    if count_steps:
        _LOGGER.info("counting instructions per token (%d positions)", count_steps)
        for rel, (insns, cycles) in count_instructions(directory, env, count_steps).items():
            m.insns_per_token[rel] = insns
            m.cycles_per_token[rel] = cycles
    return m


# ---------------------------------------------------------------------------- report

def describe(directory: Path, m: Measurements) -> str:
    """BUNDLE.txt."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    mb = 1e6
    lines = [
        f"storybot {__version__} board bundle for riscv64 Linux (built from {_source()})",
        "",
        "SIZE",
        f"  {size / mb:.1f} MB unpacked, {len(files) + 2} files (with MANIFEST and this one);",
        "  installed the same under PREFIX/releases/<id>, and install.sh keeps the",
        f"  previous release for a way back: plan on {2 * size / mb:.0f} MB under PREFIX.",
        "",
        "RAM (resident set of the riscv64 program, measured under qemu-user; the model is",
        "mapped from its file, so its pages are clean and can be dropped, but every token",
        "reads them all: keep the whole model resident. Its 8-bit classifier is not",
        "mapped: a few of its row blocks are read (pread) for each token, behind the",
        "4-bit draft, and stay in the page cache as long as memory allows)",
    ]
    if m.daemon_peak_mb:
        lines += [
            f"  storybot serve, one story of {m.steps} positions ({m.daemon_sentences} sentences):",
            f"    peak {m.daemon_peak_mb:.1f} MiB, of which the model {m.daemon_model_mb:.1f} MiB;"
            f" idle after it {m.daemon_idle_mb:.1f} MiB",
            f"    (python3 3.13 of Debian trixie, cffi ABI mode, lib/{DAEMON_LIB}, T-Head's qemu)",
        ]
    lines += [
        f"  storybot-run.rv64gc, {m.steps} positions: peak {m.cli_peak_mb:.1f} MiB,"
        f" of which the model {m.cli_model_mb:.1f} MiB",
    ]
    if m.daemon_peak_mb:
        lines.append(f"  Needs: {m.daemon_peak_mb:.0f} MiB free for storybot serve, "
                     f"{m.cli_peak_mb:.0f} MiB for the CLI alone.")
    lines += [f"  Note: {n}" for n in m.notes]
    if m.insns_per_token:
        lines += ["", f"INSTRUCTIONS PER GENERATED TOKEN (qemu insncount plugin, "
                      f"temperature 1, top-p 0.9, median of the generated positions "
                      f"among the first {m.count_steps})"]
        for rel, insns in m.insns_per_token.items():
            lines.append(f"  {rel}: {insns / 1e6:.1f} M instructions, "
                         f"~{m.cycles_per_token[rel] / 1e6:.0f} M C906 cycles (plugin's model)")
    lines += ["", "FILES"]
    lines += [f"  {p.stat().st_size:>10}  {p.relative_to(directory).as_posix()}" for p in files]
    lines += [
        "",
        "INSTALL (as root on the board; BusyBox sh is enough)",
        "  tar -xzf storybot-<version>-<id>-riscv64.tar.gz",
        "  sh storybot-<version>-<id>-riscv64/install.sh      # --help for the options",
        "  /etc/init.d/S99storybot start    (or: systemctl start storybot-board)",
        "",
        "Which build runs: install.sh links python/robot/libstorybot.so to lib/<libc>-<cpu>/",
        "(libc: the dynamic loader present, ld-musl-riscv64*.so.1 or ld-linux-riscv64-lp64d.so.1;",
        "cpu: c906 when /proc/device-tree says thead,c906, else rv64gc) and bin/storybot-run",
        "to storybot-run.<cpu>. --libc and --cpu override both.",
        "",
    ]
    return "\n".join(lines)


def _source() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "a source tree without git"
    return f"git {head}"


# ---------------------------------------------------------------------------- all of it

def default_userland() -> Path | None:
    """The riscv64 Debian userland of tools/riscv/userland.sh, if it was made."""
    root = Path(subprocess.run(["bash", str(REPO / "tools" / "riscv" / "userland.sh"),
                                "--print-root"], capture_output=True, text=True,
                               check=True).stdout.strip())
    return root if (root / "usr" / "bin" / "python3").exists() else None


def build(model: Path, tokenizer: Path, out: Path, *, userland: Path | None = None,
          measure_steps: int = 256, count_steps: int = 16) -> Bundle:
    """Builds, stages, measures and packs the bundle into out/; returns where it is.

    measure_steps 0 skips the RSS measurements and count_steps 0 the instruction counts.
    """
    env = bench.riscv_env()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".storybot-{__version__}-riscv64.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    lock_path = REPO / "native" / "build" / "bundle.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # builds share native/build/bundle: one at a time in a source tree
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stage(work, compile_all(env), model, tokenizer)
        m = (measure(work, env, userland, measure_steps, count_steps) if measure_steps
             else Measurements(notes=["not measured (--measure-steps 0)"]))
        (work / "BUNDLE.txt").write_text(describe(work, m))
        bundle_id = write_manifest(work)[:12]
        directory = out / f"storybot-{__version__}-{bundle_id}-riscv64"
        shutil.rmtree(directory, ignore_errors=True)
        work.rename(directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tarball = directory.with_name(directory.name + ".tar.gz")
    write_tarball(directory, tarball)
    return Bundle(directory, tarball, bundle_id, m)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bundle", help="cross-build the board's software for riscv64 into one checked tarball",
        description="Builds storybot for riscv64 (static CLIs, libstorybot.so for musl and "
                    "glibc Pythons), adds the Python package, a 4-bit model, the service files "
                    "and install.sh, measures RAM under qemu-user, and writes a directory and "
                    "its .tar.gz. Needs tools/riscv/setup.sh (and tools/riscv/userland.sh to "
                    "measure the board daemon).")
    p.add_argument("--model", default=models.DEFAULT_MODEL,
                   help="fp32 llama2.c model to convert to the board format (default: %(default)s)")
    p.add_argument("--tokenizer", default=models.DEFAULT_TOKENIZER,
                   help="tokenizer file or name (default: %(default)s)")
    p.add_argument("--out", default="dist", help="output folder (default: %(default)s)")
    p.add_argument("--userland", default=None,
                   help="riscv64 root with python3 + cffi to measure storybot serve in "
                        "(default: tools/riscv/userland.sh's, if made)")
    p.add_argument("--measure-steps", type=int, default=256,
                   help="positions of the story told to measure RSS; 0: do not measure "
                        "(default: %(default)s)")
    p.add_argument("--count-steps", type=int, default=16,
                   help="positions to count instructions over; 0: do not count "
                        "(default: %(default)s)")
    p.add_argument("--breakdown", metavar="DIR", default=None,
                   help="build nothing: measure the bundle in DIR's board daemon by mapping, "
                        "import by import and over a story of --measure-steps positions "
                        "(robot/dev/memory.py)")
    p.set_defaults(func=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> int:
    userland = Path(args.userland) if args.userland else default_userland()
    if args.breakdown:
        from . import memory
        if userland is None:
            raise SystemExit("no riscv64 userland to run the daemon in (tools/riscv/userland.sh)")
        print(memory.report(Path(args.breakdown).resolve(), userland, args.measure_steps), end="")
        return 0
    b = build(models.find(args.model), models.find(args.tokenizer), Path(args.out),
              userland=userland, measure_steps=args.measure_steps, count_steps=args.count_steps)
    print((b.directory / "BUNDLE.txt").read_text())
    print(f"{b.directory}\n{b.tarball} ({b.tarball.stat().st_size / 1e6:.1f} MB)")
    return 0
