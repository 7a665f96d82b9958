"""The emulated Duo's systemd variant (tools/board-vm/build-systemd.sh): systemd as PID 1
on the same kernel and initramfs, the bundle installed by its install.sh (systemd mode,
chosen by itself) in the VM, paired, and systemd/storybot-board.service run for real:
Type=notify readiness, watchdog pings, a restart after kill -9, the sandbox holding, and
a story through the voice host on this machine.

One VM boot for all of it (a boot takes ~40 s wall here). Figures are printed with a
"board-vm-systemd:" prefix; nothing is asserted about time.
"""
from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from test_board_vm import storybot_ask, voice_host
from test_install import board_bundle, need  # noqa: F401  (board_bundle: fixture)
from test_voicehost import SECRET

from robot.dev import boardvm
from robot.dev.bundle import free_port
from robot.story import is_complete

pytestmark = pytest.mark.slow

UNIT = "storybot-board"
STATE = "/var/lib/storybot-board"


@pytest.fixture
def report(request):
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"board-vm-systemd: {text}")
    return write


def wait_until(vm: boardvm.SystemdBoardVM, test, what: str, timeout: float) -> dict[str, str]:
    """Polls the unit's properties until test(props) holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        props = vm.show(UNIT, "ActiveState", "SubState", "NRestarts", "MainPID",
                        "WatchdogTimestampMonotonic", "Result")
        if test(props):
            return props
        if time.monotonic() > deadline:
            raise AssertionError(f"{UNIT}: not {what} in {timeout} s: {props}\n" +
                                 vm.sh(f"journalctl -u {UNIT} -n 30 -o cat", check=False))
        time.sleep(1)


def connected(vm: boardvm.SystemdBoardVM, times: int) -> bool:
    log = vm.sh(f"journalctl -u {UNIT} -o cat")
    return log.count(f"Connected to {boardvm.VOICE_IN_GUEST}") >= times


@pytest.mark.asyncio
async def test_the_board_service_under_systemd(board_bundle, tmp_path, report):  # noqa: F811
    need(shutil.which("qemu-system-riscv64") is not None, "qemu-system-riscv64 (qemu-system-misc)")
    try:
        boardvm.systemd_disk()
    except RuntimeError as err:
        need(False, f"the systemd board VM's disk: {err}")
    usb = boardvm.bundle_disk(board_bundle.tarball, tmp_path / "bundle.ext4")
    run = asyncio.to_thread
    async with voice_host(tmp_path) as (synth, voice_port):
        with boardvm.SystemdBoardVM.fresh(tmp_path, control_port=free_port(),
                                          voice_port=voice_port, extra_disk=usb) as vm:
            boot = await run(vm.boot)
            analyze = (await run(vm.sh, "systemd-analyze time")).splitlines()[0]
            report(f"-m {vm.memory_mb}M: boot to multi-user {boot.seconds:.1f} s guest / "
                   f"{boot.wall_seconds:.0f} s wall ({analyze.strip()}), MemAvailable "
                   f"{boot.mem_available_kb} kB (MemTotal {boot.mem_total_kb} kB)")
            assert (await run(vm.sh, "readlink /proc/1/exe")).strip() == "/usr/lib/systemd/systemd"

            t0 = time.monotonic()
            out = await run(vm.install, board_bundle.tarball.name)
            took = time.monotonic() - t0
            assert "installed storybot-board.service with a drop-in" in out, out
            assert (await run(vm.sh, f"systemctl is-enabled {UNIT}")).strip() == "enabled"
            await run(vm.configure, boardvm.board_settings(128, 0))
            await run(vm.pair, SECRET)

            # Type=notify: start returns once the daemon sent READY=1
            t0 = time.monotonic()
            started = await run(vm.sh, f"systemctl start {UNIT} && echo started", 600, False)
            assert "started" in started, started + await run(
                vm.sh, f"ls -ln /run/credentials/*; journalctl -u {UNIT} -o cat | tail -n 30")
            took_start = time.monotonic() - t0
            props = await run(vm.show, UNIT, "Type", "ActiveState", "SubState", "NRestarts",
                              "MainPID", "User", "WatchdogUSec")
            assert props["Type"] == "notify" and props["ActiveState"] == "active"
            assert props["SubState"] == "running" and props["NRestarts"] == "0"
            pid = props["MainPID"]
            status = await run(vm.sh, f"grep -E '^(Uid|CapEff):' /proc/{pid}/status")
            uid = int(status.split()[1])
            assert 61184 <= uid <= 65519, status   # a dynamic user's range, not root
            assert "CapEff:\t0000000000000000" in status
            mem = await run(vm.mem_available_kb)
            rss = (await run(vm.sh, f"awk '/^VmRSS:/ {{ print $2 }}' /proc/{pid}/status")
                   ).split()[-1]
            report(f"install.sh {took:.0f} s; systemctl start {took_start:.0f} s wall (READY=1); "
                   f"MemAvailable {mem} kB, daemon RSS {rss} kB, uid {uid}")

            # the watchdog: WATCHDOG=1 every WatchdogSec/2
            first = await run(wait_until, vm, lambda p: p["WatchdogTimestampMonotonic"] != "0",
                              "pinging its watchdog", 60)
            second = await run(wait_until, vm, lambda p: p["WatchdogTimestampMonotonic"] !=
                               first["WatchdogTimestampMonotonic"], "pinging again", 60)
            gap = (int(second["WatchdogTimestampMonotonic"]) -
                   int(first["WatchdogTimestampMonotonic"])) / 1e6
            report(f"watchdog pings {gap:.1f} s apart (WatchdogUSec={props['WatchdogUSec']})")

            # the sandbox, seen from inside the service's own mount namespace as its user
            inside = f"nsenter -t {pid} -m -S {uid} -G {uid} --"
            wrote = await run(vm.sh, f"{inside} sh -c 'touch {STATE}/probe && echo state-ok; "
                              "for d in /etc /usr /opt/storybot /root /var/lib /var/log /home; do "
                              "touch $d/probe 2>/dev/null && echo \"wrote $d\"; done; "
                              "grep -c . /proc/self/mountinfo'")
            assert "state-ok" in wrote and "wrote" not in wrote, wrote
            root_ro = await run(vm.sh, f"awk '$5 == \"/\" {{ print $6 }}' /proc/{pid}/mountinfo")
            # the mount options are the last word (the console may echo its prompt first)
            assert root_ro.split()[-1].split(",")[0] == "ro", root_ro
            exposure = (await run(vm.sh, f"systemd-analyze security {UNIT} --no-pager "
                                  "| tail -n 1", 300, False)).strip()
            report(f"sandbox: / is {root_ro.split()[0]}, only {STATE} writable; {exposure}")

            # a story, paired, through the voice host on this machine
            await run(wait_until, vm, lambda p: connected(vm, 1), "connected", 120)
            t0 = time.monotonic()
            code, told, err = await storybot_ask(vm)
            assert code == 0 and told and synth.said == told, err
            assert all(is_complete(s) for s in told)
            report(f"a story: {len(told)} sentences in {time.monotonic() - t0:.0f} s")

            # kill -9: Restart=on-failure brings it back, READY=1 again
            await run(vm.sh, f"kill -9 {pid}")
            t0 = time.monotonic()
            back = await run(wait_until, vm, lambda p: p["NRestarts"] == "1" and
                             p["ActiveState"] == "active" and p["SubState"] == "running",
                             "restarted", 300)
            assert back["MainPID"] != pid
            report(f"kill -9 {pid}: restarted as {back['MainPID']} (NRestarts 1), active "
                   f"again after {time.monotonic() - t0:.0f} s wall")
            journal = await run(vm.sh, f"journalctl -u {UNIT} -o cat")
            assert "status=9/KILL" in journal, journal[-2000:]
