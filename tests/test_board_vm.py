"""The whole emulated Duo (robot/dev/boardvm.py, tools/board-vm/): Debian's riscv64 kernel
in qemu-system-riscv64 with the Duo's ~36 MiB available, BusyBox init, the bundle
installed by its install.sh under BusyBox sh in the VM, storybot serve started at boot by
S99storybot, `storybot ask` from this machine through qemu's user network, and a voice
host here speaking with Piper. Then power cuts: qemu killed mid-story and mid-install.

The figures (boot time, MemAvailable, the daemon's RSS, story time) are printed on the
terminal with a "board-vm:" prefix; nothing is asserted about time.
"""
from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from test_board_emulated import Recording
from test_install import board_bundle, install, need  # noqa: F401  (board_bundle: fixture)
from test_voicehost import SECRET

from robot import seal
from robot.board import KV_CACHE
from robot.dev import boardvm, bundle
from robot.dev.bundle import free_port
from robot.engine import Engine, Params
from robot.story import Story, is_complete
from robot.voicehost import VoiceHost, VoiceHostSettings
from robot.wordfilter import WordFilter

pytestmark = pytest.mark.slow

STEPS = 256
PROMPT = "a little robot who loves the moon"


@pytest.fixture(scope="module")
def report(request):
    """Writes a line past pytest's capture: the figures belong in the run's log."""
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"board-vm: {text}")
    return write


@pytest.fixture(scope="module")
def installed(board_bundle, tmp_path_factory, report):  # noqa: F811
    """A root disk with the bundle installed in the VM by install.sh, shut down cleanly;
    each test boots a copy of it."""
    need(shutil.which("qemu-system-riscv64") is not None, "qemu-system-riscv64 (qemu-system-misc)")
    try:
        boardvm.images()
    except RuntimeError as err:
        need(False, f"the board VM's images: {err}")
    work = tmp_path_factory.mktemp("board-vm")
    usb = boardvm.bundle_disk(board_bundle.tarball, work / "bundle.ext4")
    with boardvm.BoardVM.fresh(work, control_port=free_port(), voice_port=free_port(),
                               extra_disk=usb) as vm:
        boot = vm.boot()
        t0 = time.monotonic()
        out = vm.install(board_bundle.tarball.name)
        took = time.monotonic() - t0
        stdlib = vm.sh("ls /usr/lib/python3*/asyncio/__pycache__ 2>/dev/null || true")
        vm.configure(boardvm.board_settings(STEPS, 0))
        vm.pair(SECRET)
        vm.poweroff()
    report(f"first boot {boot.seconds:.1f} s guest / {boot.wall_seconds:.0f} s wall, "
           f"MemAvailable {boot.mem_available_kb} kB (MemTotal {boot.mem_total_kb} kB, "
           f"-m {vm.memory_mb}M); install.sh in the VM {took:.0f} s")
    assert "storybot generate (lib/glibc-rv64gc, ABI mode) told: Once" in out
    assert "installed /etc/init.d/S99storybot" in out
    # the userland came without bytecode: install.sh compiled what the daemon imports
    assert "base_events.cpython" in stdlib
    return vm.disk


def board(installed: Path, tmp_path: Path, voice_port: int, **kwargs) -> boardvm.BoardVM:
    disk = tmp_path / "root.ext4"
    subprocess.run(["cp", "--sparse=always", str(installed), str(disk)], check=True)
    return boardvm.BoardVM(disk, control_port=free_port(), voice_port=voice_port, **kwargs)


@asynccontextmanager
async def voice_host(tmp_path: Path):
    """The voice host on this machine's loopback: real Piper, WAVs into tmp_path."""
    synth = Recording()
    port = free_port()
    host = VoiceHost(VoiceHostSettings(host="127.0.0.1", port=port, wav_dir=str(tmp_path)), synth,
                     secret=SECRET)
    task = asyncio.create_task(host.run())
    await asyncio.wait_for(host.server.listening.wait(), 10)
    try:
        yield synth, port
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def storybot_ask(vm: boardvm.BoardVM, prompt: str = PROMPT,
                       timeout: float = 900) -> tuple[int, list[str], str]:
    """`storybot ask` on this machine, through the VM's forwarded control port, paired
    (the board's control port is on the network in the VM)."""
    key = vm.disk.with_name("pairing.key")
    if not key.exists():
        seal.save(key, SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "robot.cli", "ask", "--board", f"127.0.0.1:{vm.control_port}",
        "--pairing", str(key), prompt, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return -1, out.decode().splitlines(), err.decode() + "\n(timed out)"
    return proc.returncode, out.decode().splitlines(), err.decode()


def x86_story(board_bundle, opening: str, steps: int) -> list[str]:  # noqa: F811
    """The story robot.story tells on x86 with the generic kernels (the glibc rv64gc
    library's family) and the KV cache board_settings gives the VM's daemon, from the
    bundle's own model."""
    model = board_bundle.directory / "models" / bundle.MODEL_NAME
    cache = KV_CACHE[boardvm.board_settings(steps, 0)["STORYBOT_KV_CACHE"]]
    params = Params(temperature=0, steps=steps, kernels="generic", kv_fp16=cache)
    with Engine(model, model.parent / "tokenizer.bin", params) as engine:
        return list(Story(engine, opening, params, word_filter=WordFilter.default()).sentences())


def majflt(vm: boardvm.BoardVM, pid: str) -> int:
    """Major page faults of a process: pages read back from disk (the mapped model)."""
    return int(vm.sh(f"cat /proc/{pid}/stat").rsplit(")", 1)[1].split()[9])


@pytest.mark.asyncio
async def test_boots_to_ready_from_the_init_script(installed, tmp_path, report):
    # ready = the daemon is up and paired with the voice host on this machine
    async with voice_host(tmp_path) as (_, voice_port):
        with board(installed, tmp_path, voice_port) as vm:
            boot = await asyncio.to_thread(vm.boot)
            ready = await asyncio.to_thread(vm.wait_ready)
            ps = await asyncio.to_thread(vm.sh, "ps -o pid,args")
            after = await asyncio.to_thread(vm.mem_available_kb)
            rss = await asyncio.to_thread(vm.daemon_rss_kb)
            status = await asyncio.to_thread(vm.sh, "grep Ready: /var/log/storybot.log")
            # restrict=on: the guest reaches nothing here but the forwards, not even the
            # host's loopback through the user network's gateway
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                listener.setblocking(False)
                port = listener.getsockname()[1]
                tried = await asyncio.to_thread(
                    vm.sh, f"timeout 5 nc -w 3 10.0.2.2 {port} < /dev/null; echo \"nc: $?\"")
                with pytest.raises(BlockingIOError):
                    listener.accept()
    report(f"boot {boot.seconds:.1f} s guest / {boot.wall_seconds:.0f} s wall, MemAvailable "
           f"{boot.mem_available_kb} kB before S99storybot; daemon ready at {ready:.1f} s "
           f"uptime, MemAvailable then {after} kB, daemon RSS {rss} kB")
    assert "python3 -m robot.cli serve" in ps  # bin/storybot's exec, from S99storybot's loop
    assert "KV cache fp16" in status  # the Duo's cache, though this CPU would pick fp32
    assert 30 * 1024 < boot.mem_available_kb < 42 * 1024  # the Duo's ~36 MiB, not a big VM
    assert "nc: 0" not in tried


@pytest.mark.asyncio
async def test_a_256_position_story_end_to_end_in_the_duos_memory(installed, board_bundle,
                                                                  tmp_path, report):  # noqa: F811
    async with voice_host(tmp_path) as (synth, voice_port):
        with board(installed, tmp_path, voice_port) as vm:
            await asyncio.to_thread(vm.boot)
            await asyncio.to_thread(vm.wait_ready)
            pid = (await asyncio.to_thread(vm.sh, "cat /run/storybot.pid")).split()[-1]
            faults = await asyncio.to_thread(majflt, vm, pid)
            read = await asyncio.to_thread(vm.disk_read_kb)
            await asyncio.to_thread(vm.sh, "(/usr/local/sbin/memlow /run/memlow &)")
            t0 = time.monotonic()
            code, told, err = await storybot_ask(vm)
            took = time.monotonic() - t0
            low = int((await asyncio.to_thread(vm.sh, "cat /run/memlow")).split()[-1])
            faults = await asyncio.to_thread(majflt, vm, pid) - faults
            read = await asyncio.to_thread(vm.disk_read_kb) - read
            same_pid = (await asyncio.to_thread(vm.sh, "cat /run/storybot.pid")).split()[-1]
            ooms = await asyncio.to_thread(vm.oom_kills)
            rss = await asyncio.to_thread(vm.daemon_rss_kb)
            peak = await asyncio.to_thread(vm.daemon_rss_kb, "VmHWM")
    report(f"{STEPS}-position story: {took:.0f} s wall, lowest MemAvailable {low} kB, daemon "
           f"RSS after {rss} kB (peak {peak} kB), {faults} major faults, {read} kB read from "
           f"the disk, {ooms} OOM kills")
    assert code == 0 and "(stopped" not in err, err  # told whole, not cut short
    assert ooms == 0 and same_pid == pid  # nothing killed, nothing restarted
    model_bytes = (board_bundle.directory / "models" / bundle.MODEL_NAME).stat().st_size
    assert faults < model_bytes // 4096  # the mapped model was not read over and over
    # nor the classifier's blocks (pread, so no faults): the first story after boot reads
    # the model once at most, 16 blocks a token read again each time would be 40 MB
    assert 0 < read * 1024 < model_bytes
    assert told and synth.said == told and all(is_complete(s) for s in told)
    [wav] = tmp_path.glob("*-story1.wav")
    assert wav.stat().st_size > 44100
    opening = err.split("): ", 1)[1].splitlines()[0]  # "story 1 (topic): <opening>"
    assert told == x86_story(board_bundle, opening, STEPS)


SHORT = 48  # positions of the stories told after a power cut: that one is told is the point


def intact(vm: boardvm.BoardVM) -> str:
    """The release current points to: every file as its MANIFEST says, install.sh's links
    in place; returns its name."""
    vm.sh("cd /opt/storybot/current && sha256sum -c MANIFEST | grep -v ': OK$'; "
          "[ -z \"$(sha256sum -c MANIFEST 2>&1 | grep -v ': OK$')\" ]")
    vm.sh("[ -e /opt/storybot/current/python/robot/libstorybot.so ] && "
          "[ -e /opt/storybot/current/bin/storybot-run ]")  # -e: the link's target exists
    return vm.sh("readlink /opt/storybot/current").strip()


async def tells_a_story(vm: boardvm.BoardVM, synth: Recording) -> list[str]:
    """After a (re)boot: the daemon starts from the init script and tells a whole story."""
    await asyncio.to_thread(vm.wait_ready)
    before = len(synth.said)
    code, told, err = await storybot_ask(vm)
    assert code == 0 and "(stopped" not in err, err
    assert told and synth.said[before:] == told and all(is_complete(s) for s in told)
    return told


def e2fsck(vm: boardvm.BoardVM) -> str:
    """After a clean shutdown, fsck's verdict on the root disk, without changing it."""
    vm.poweroff()
    proc = subprocess.run(["e2fsck", "-fn", str(vm.disk)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.asyncio
async def test_a_power_cut_mid_story(installed, tmp_path, report):
    async with voice_host(tmp_path) as (synth, voice_port):
        with board(installed, tmp_path, voice_port) as vm:
            await asyncio.to_thread(vm.boot)
            await asyncio.to_thread(vm.configure, {"STORYBOT_STEPS": str(SHORT)})
            mark = await asyncio.to_thread(vm.log_mark)
            await asyncio.to_thread(vm.sh, "/etc/init.d/S99storybot restart")
            await asyncio.to_thread(vm.wait_ready, 600, mark)
            asking = asyncio.create_task(storybot_ask(vm, timeout=300))
            for _ in range(3000):  # until the voice host has a sentence, at most 300 s
                if synth.said or asking.done():
                    break
                await asyncio.sleep(0.1)
            assert synth.said, (await asking)[2]
            vm.cut_power()
            code, _, _ = await asking
            assert code != 0  # the story was cut off, and storybot ask said so
            boot = await asyncio.to_thread(vm.boot)
            release = await asyncio.to_thread(intact, vm)
            told = await tells_a_story(vm, synth)
            fsck = await asyncio.to_thread(e2fsck, vm)
    report(f"power cut mid-story: rebooted in {boot.seconds:.1f} s, {release} intact, "
           f"next story {len(told)} sentences; e2fsck: {fsck}")


def second_bundle(board_bundle, tmp_path: Path) -> Path:  # noqa: F811
    """The bundle with one setting more: another MANIFEST, so another release id."""
    work = tmp_path / "second"
    # without the bytecode the emulated daemon tests wrote beside the bundle's modules
    shutil.copytree(board_bundle.directory, work, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(work / "storybot.env", "a") as f:
        f.write("# the second bundle\n")
    directory = tmp_path / f"storybot-{(work / 'VERSION').read_text().strip()}-" \
                           f"{bundle.write_manifest(work)[:12]}-riscv64"
    work.rename(directory)
    tarball = directory.with_name(directory.name + ".tar.gz")
    bundle.write_tarball(directory, tarball)
    return tarball


def test_the_next_install_removes_a_copy_a_power_cut_left(board_bundle, tmp_path):  # noqa: F811
    """What the cut while checking (below) leaves, releases/.new-<id>, went unnoticed by
    install.sh's clean-up (its glob skips dot files) and held ~18 MB of the card for good."""
    root = tmp_path / "root"
    install(board_bundle.directory, root, "--libc", "glibc", "--no-service")
    releases = root / "opt" / "storybot" / "releases"
    left = releases / ".new-0.1.0-0123456789ab"
    (left / "bin").mkdir(parents=True)
    (left / "bin" / "storybot-run.rv64gc").write_bytes(b"half a copy")
    tarball = second_bundle(board_bundle, tmp_path)
    out = install(tarball.with_name(tarball.name.removesuffix(".tar.gz")), root, "--libc",
                  "glibc", "--no-service").stdout
    assert "removed .new-0.1.0-0123456789ab, left by an interrupted install" in out
    assert sorted(p.name for p in releases.iterdir()) == sorted(
        [board_bundle.directory.name.split("-", 1)[1].removesuffix("-riscv64"),
         tarball.name.split("-", 1)[1].removesuffix("-riscv64.tar.gz")])


# Where to cut, after one of install.sh's lines: while it checks the new copy; just after
# it switched current; and a few seconds later, when ext4 has committed the renames to
# its journal (every 5 s) but may not yet have written the new files' data (the
# flusher's 30 s)
CUTS = {"checking": ("storybot install: storybot-run (rv64gc) told:", 0),
        "switched": ("storybot install: current -> ", 0),
        "switched-8s": ("storybot install: current -> ", 8)}


@pytest.mark.asyncio
@pytest.mark.parametrize("cut", list(CUTS))
async def test_a_power_cut_mid_install_of_a_second_bundle(installed, board_bundle, tmp_path,
                                                          cut, report):  # noqa: F811
    cut_after, delay = CUTS[cut]
    tarball = second_bundle(board_bundle, tmp_path)
    usb = boardvm.bundle_disk(tarball, tmp_path / "second.ext4")
    async with voice_host(tmp_path) as (synth, voice_port):
        with board(installed, tmp_path, voice_port, extra_disk=usb) as vm:
            await asyncio.to_thread(vm.boot)
            first = await asyncio.to_thread(intact, vm)
            await asyncio.to_thread(vm.configure, {"STORYBOT_STEPS": str(SHORT)})
            start = vm.console_mark()
            stem = tarball.name.removesuffix(".tar.gz")
            vm.proc.stdin.write(
                f"mkdir -p /mnt/usb && mount -o ro /dev/vdb /mnt/usb && tar -xzf "
                f"/mnt/usb/{tarball.name} -C /root && sh /root/{stem}/install.sh\n".encode())
            vm.proc.stdin.flush()
            await asyncio.to_thread(vm.wait_for, re.escape(cut_after), 600, start)
            await asyncio.sleep(delay)
            vm.cut_power()
            boot = await asyncio.to_thread(vm.boot)
            release = await asyncio.to_thread(intact, vm)
            releases = await asyncio.to_thread(vm.sh, "ls -a /opt/storybot/releases")
            told = await tells_a_story(vm, synth)
            fsck = await asyncio.to_thread(e2fsck, vm)
    report(f"power cut mid-install ({cut}): rebooted in {boot.seconds:.1f} s, current "
           f"{release} (was {first}) intact, releases: {' '.join(releases.split())}; next "
           f"story {len(told)} sentences; e2fsck: {fsck}")
    assert release in (first, f"releases/{stem.split('-')[1]}-{stem.split('-')[2]}")
