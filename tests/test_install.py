"""board/install.sh on the real bundle: it installs into a fresh root, does nothing the
second time, refuses a damaged or altered bundle, and a failed install leaves the
running release as it was. Run by BusyBox's ash (the Duo's shell) and by dash.

The bundle is built once per test run (robot.dev.bundle.build, under a minute) and shared
with tests/test_board_emulated.py. Installs go into temporary roots (--root), where the
riscv64 programs cannot run, except where --emulator hands them to qemu-user.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import MODELS, REPO
from robot.dev import bench, bundle

pytestmark = pytest.mark.slow  # builds the board bundle (about a minute)

REQUIRED = os.environ.get("STORYBOT_REQUIRE_ALL") == "1"
SHELLS = {"busybox-ash": ["busybox", "sh"], "dash": ["dash"]}


def need(ok: bool, what: str) -> None:
    """Skip without a tool; in CI (STORYBOT_REQUIRE_ALL=1) fail instead."""
    if not ok:
        if REQUIRED:
            pytest.fail(f"{what} is missing")
        pytest.skip(f"{what} is missing")


@functools.cache
def userland() -> Path:
    """The riscv64 Debian userland (tools/riscv/userland.sh: idempotent, 0 s once made)."""
    proc = subprocess.run(["bash", str(REPO / "tools" / "riscv" / "userland.sh")],
                          capture_output=True, text=True)
    need(proc.returncode == 0, f"the riscv64 userland: {proc.stdout[-300:]}{proc.stderr[-300:]}")
    return bundle.default_userland()


_BUILT: list[bundle.Bundle] = []


@pytest.fixture(scope="session")
def board_bundle(tmp_path_factory) -> bundle.Bundle:
    """The bundle as `storybot bundle` makes it, with shorter measurements: built once
    per test run, for this module and tests/test_board_emulated.py, which imports this."""
    if not _BUILT:
        try:
            env = bench.riscv_env()
        except subprocess.CalledProcessError:
            env = {}
        need(all(env.get(v) for v in ("RV_CC_ZIG", "RV_CC_XTHEAD", "QEMU_C906")) and
             Path(env["RV_XUANTIE_QEMU"]).exists(), "riscv64 toolchains (tools/riscv/setup.sh)")
        _BUILT.append(bundle.build(MODELS / "stories15M.bin", MODELS / "tokenizer.bin",
                                   tmp_path_factory.mktemp("bundle"), userland=userland(),
                                   measure_steps=64, count_steps=8))
    return _BUILT[0]


def install(bundle_dir: Path, root: Path, *args: str, shell: str = "busybox-ash",
            check: bool = True) -> subprocess.CompletedProcess:
    need(shutil.which(SHELLS[shell][0]) is not None, shell)
    proc = subprocess.run([*SHELLS[shell], str(bundle_dir / "install.sh"), "--root", str(root),
                           *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(top: Path) -> dict:
    """Every path under top: a link's target, a file's size and mtime, or "dir"."""
    def state(p: Path):
        if p.is_symlink():
            return os.readlink(p)
        return "dir" if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)

    return {p.relative_to(top).as_posix(): state(p) for p in sorted(top.rglob("*"))}


def library(release: Path) -> str:
    """Where the release's libstorybot.so link points (install.sh's choice)."""
    return os.readlink(release / "python" / "robot" / "libstorybot.so")


def musl_root(tmp_path: Path, c906: bool = False) -> Path:
    """An empty system with musl's loader (as on the stock Duo), and a C906 if asked."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "ld-musl-riscv64v0p7_xthead.so.1").write_bytes(b"")
    if c906:
        cpu = root / "proc" / "device-tree" / "cpus" / "cpu@0"
        cpu.mkdir(parents=True)
        (cpu / "compatible").write_bytes(b"thead,c906\0riscv\0")
    return root


def copy_bundle(board_bundle, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(board_bundle.directory, dst, symlinks=True)
    return dst


@pytest.mark.parametrize("shell", list(SHELLS))
def test_installs_from_the_tarball_and_a_second_run_changes_nothing(
        board_bundle, tmp_path, shell):
    with tarfile.open(board_bundle.tarball) as tar:
        tar.extractall(tmp_path / "unpacked", filter="tar")
    [bundle_dir] = (tmp_path / "unpacked").iterdir()
    root = musl_root(tmp_path)
    first = install(bundle_dir, root, "--no-service", shell=shell)
    dest = root / "opt" / "storybot"
    release = f"releases/{bundle.__version__}-{board_bundle.id}"
    assert os.readlink(dest / "current") == release
    current = dest / "current"
    assert library(current) == "../../lib/musl-rv64gc/libstorybot.so"
    assert os.readlink(current / "bin/storybot-run") == "storybot-run.rv64gc"
    assert (current / "python/robot/libstorybot.so").resolve().is_file()
    assert (current / "bin/storybot-bench").resolve().is_file()
    assert "cannot run riscv64 programs" in first.stdout  # no emulator given: no checks
    assert not (root / "etc").exists()  # --no-service writes nothing outside PREFIX

    before = snapshot(root)
    again = install(bundle_dir, root, "--no-service", shell=shell)
    assert "already installed and intact" in again.stdout
    assert "current already is" in again.stdout
    assert snapshot(root) == before


def test_the_c906_gets_the_vector_builds(board_bundle, tmp_path):
    root = musl_root(tmp_path, c906=True)
    install(board_bundle.directory, root, "--no-service")
    current = root / "opt" / "storybot" / "current"
    assert library(current) == "../../lib/musl-c906/libstorybot.so"
    assert os.readlink(current / "bin/storybot-run") == "storybot-run.c906"


def test_an_unknown_libc_is_refused_unless_named(board_bundle, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = install(board_bundle.directory, root, "--no-service", check=False)
    assert proc.returncode != 0 and "--libc" in proc.stderr
    install(board_bundle.directory, root, "--no-service", "--libc", "glibc")
    assert library(root / "opt/storybot/current") == "../../lib/glibc-rv64gc/libstorybot.so"


@pytest.mark.parametrize("damage", ["changed byte", "extra file", "missing file",
                                    "path outside"])
def test_a_damaged_or_altered_bundle_is_refused(board_bundle, tmp_path, damage):
    bad = copy_bundle(board_bundle, tmp_path, "bad")
    if damage == "changed byte":
        model = bad / "models" / bundle.MODEL_NAME
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 1
        model.write_bytes(bytes(data))
    elif damage == "extra file":
        (bad / "bin" / "sneaky").write_text("#!/bin/sh\n")
    elif damage == "missing file":
        (bad / "models" / "tokenizer.bin").unlink()
    else:
        with open(bad / "MANIFEST", "a") as f:
            f.write(f"{'0' * 64}  ../etc/passwd\n")
    root = musl_root(tmp_path)
    proc = install(bad, root, "--no-service", check=False)
    assert proc.returncode != 0
    assert "refusing the bundle" in proc.stderr and "MANIFEST" in proc.stderr
    named = {"changed byte": f"models/{bundle.MODEL_NAME}", "extra file": "bin/sneaky",
             "missing file": "models/tokenizer.bin", "path outside": "malformed"}[damage]
    assert named in proc.stderr
    assert not (root / "opt").exists()


def test_a_failed_install_leaves_the_running_release_alone(board_bundle, tmp_path):
    need(shutil.which("qemu-riscv64-static") is not None, "qemu-user-static")
    root = musl_root(tmp_path)
    emulator = ("--emulator", "qemu-riscv64-static")
    good = install(board_bundle.directory, root, "--no-service", *emulator)
    assert "storybot-run (rv64gc) told: Once" in good.stdout  # the check ran, under qemu
    dest = root / "opt" / "storybot"
    first = os.readlink(dest / "current")
    before = snapshot(dest)

    # A consistent bundle of a new version whose CLI does not run: the check fails.
    broken = copy_bundle(board_bundle, tmp_path, "broken")
    (broken / "VERSION").write_text("0.1.1\n")
    (broken / "bin" / "storybot-run.rv64gc").write_bytes(b"\x7fELF not really")
    bundle.write_manifest(broken)  # consistent again: what a broken build would ship
    proc = install(broken, root, "--no-service", *emulator, check=False)
    assert proc.returncode != 0 and "does not run here" in proc.stderr
    assert snapshot(dest) == before  # no half-made release left, current untouched

    # A good new version switches current and keeps the first as the way back...
    second = copy_bundle(board_bundle, tmp_path, "second")
    (second / "VERSION").write_text("0.1.2\n")
    bundle.write_manifest(second)
    install(second, root, "--no-service", *emulator)
    assert os.readlink(dest / "current").startswith("releases/0.1.2-")
    assert (dest / first).is_dir()
    # ...until a third comes.
    third = copy_bundle(board_bundle, tmp_path, "third")
    (third / "VERSION").write_text("0.1.3\n")
    bundle.write_manifest(third)
    install(third, root, "--no-service")
    assert not (dest / first).exists()
    assert sorted(p.name[:5] for p in (dest / "releases").iterdir()) == ["0.1.2", "0.1.3"]


def test_busybox_init_script_and_settings(board_bundle, tmp_path):
    root = musl_root(tmp_path)
    (root / "etc" / "init.d").mkdir(parents=True)
    install(board_bundle.directory, root)
    script = root / "etc" / "init.d" / "S99storybot"
    assert script.read_bytes() == (board_bundle.directory / "service" / "S99storybot").read_bytes()
    assert script.stat().st_mode & 0o777 == 0o755
    assert os.readlink(root / "usr" / "bin" / "storybot") == "/opt/storybot/current/bin/storybot"
    settings = root / "etc" / "storybot" / "storybot.env"
    assert f"STORYBOT_MODEL={bundle.MODEL_NAME}" in settings.read_text().splitlines()

    settings.write_text(settings.read_text() + "STORYBOT_VOICE_HOST=192.0.2.1:10720\n")
    proc = install(board_bundle.directory, root)
    assert "kept your /etc/storybot/storybot.env" in proc.stdout
    assert "192.0.2.1" in settings.read_text()
    assert (root / "etc" / "storybot" / "storybot.env.bundle").is_file()


def test_systemd_unit_gets_a_drop_in_for_the_prefix(board_bundle, tmp_path):
    root = musl_root(tmp_path)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    install(board_bundle.directory, root, "--prefix", "/srv/storybot")
    unit = root / "etc" / "systemd" / "system" / "storybot-board.service"
    assert unit.is_file()
    drop_in = (unit.parent / "storybot-board.service.d" / "bundle.conf").read_text()
    assert "ExecStart=/srv/storybot/current/bin/storybot serve" in drop_in
    assert "ReadOnlyPaths=/srv/storybot" in drop_in
    assert (root / "srv" / "storybot" / "current").is_symlink()


def test_the_wrapper_runs_the_release_it_is_linked_from(board_bundle, tmp_path):
    root = musl_root(tmp_path)
    install(board_bundle.directory, root, "--no-service")
    current = root / "opt" / "storybot" / "current"
    link = tmp_path / "storybot"  # as /usr/bin/storybot links to PREFIX/current/bin/storybot
    link.symlink_to(current / "bin" / "storybot")
    fake = tmp_path / "python3"  # a stand-in python3 that shows what it was given
    fake.write_text('#!/bin/sh\necho "$PYTHONPATH|$STORYBOT_MODELS|$STORYBOT_ABI|$*"\n')
    fake.chmod(0o755)
    out = subprocess.run(["busybox", "sh", str(link), "serve", "--steps", "8"], check=True,
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "STORYBOT_PYTHON": str(fake),
                              "STORYBOT_MODELS": "/data/models"}).stdout.strip()
    release = current.resolve()  # the release itself, not current, which may move on
    assert out == f"{release}/python|{release}/models:/data/models|1|-m robot.cli serve --steps 8"
