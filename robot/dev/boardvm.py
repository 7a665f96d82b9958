"""storybot board-vm: a whole emulated Milk-V Duo in qemu-system-riscv64.

Debian trixie's riscv64 kernel boots on qemu's `virt` machine (its built-in OpenSBI),
BusyBox init runs the root disk's rcS, and the bundle is installed there by its own
install.sh under BusyBox sh, as on the board. tools/board-vm/build.sh makes the images;
tools/board-vm/README.md says what is inside and how the memory was chosen.

The network is qemu's user network with restrict=on: the guest reaches nothing but
two forwards, both on this machine's loopback. The board's control port is
127.0.0.1:<control_port> on the host (hostfwd), and the voice host the board is told
to use, 10.0.2.100:10720, is a `busybox nc 127.0.0.1 <voice_port>` qemu starts for
each connection (guestfwd), so the voice host may start after the VM and the board
may reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from .. import link, seal
from ..board import DEFAULT_CONTROL_PORT

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tools" / "board-vm" / "build.sh"
# MemAvailable right after boot ~36 MiB, the Duo's with ION off (README.md here)
DEFAULT_MEMORY_MB = 131
VOICE_IN_GUEST = "10.0.2.100:10720"
GUEST_IP = "10.0.2.15"
PROMPT = "~ # "


def images() -> Path:
    """The kernel, initramfs and root disk of tools/board-vm/build.sh (made if needed)."""
    proc = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("tools/board-vm/build.sh failed:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return Path(subprocess.run(["bash", str(BUILD), "--print-dir"], capture_output=True,
                               text=True, check=True).stdout.strip())


PAIRING_IN_GUEST = "/etc/storybot/pairing.key"


def board_settings(steps: int, temperature: float) -> dict[str, str]:
    """What /etc/storybot/storybot.env gains in the VM: the forwards, no button.

    The one place that knows the daemon's settings, for when they change (pairing)."""
    return {"STORYBOT_VOICE_HOST": VOICE_IN_GUEST,
            # hostfwd delivers to the guest's address, not its loopback
            "STORYBOT_CONTROL": f"0.0.0.0:{DEFAULT_CONTROL_PORT}",
            "STORYBOT_BUTTON": "none",
            "STORYBOT_PAIRING": PAIRING_IN_GUEST,
            "STORYBOT_STEPS": str(steps),
            "STORYBOT_TEMPERATURE": str(temperature),
            # The Duo's C906 library keeps the cache in halves; the VM's CPU has no
            # XTheadVector and would pick fp32, 1.7 MiB the board never spends.
            "STORYBOT_KV_CACHE": "fp16"}


def bundle_disk(tarball: Path, path: Path) -> Path:
    """An ext4 disk image holding the tarball: the VM's "USB stick" (/dev/vdb)."""
    staging = path.with_suffix(".d")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy(tarball, staging / tarball.name)
    size_mb = tarball.stat().st_size // 2**20 + 16
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(staging), str(path), f"{size_mb}M"],
                   check=True, capture_output=True)
    shutil.rmtree(staging)
    return path


@dataclass
class Boot:
    seconds: float            # guest uptime when rcS was done (daemon started, not ready)
    wall_seconds: float       # host time from qemu's start to the shell prompt
    mem_available_kb: int     # in rcS, before any S??* script ran
    mem_total_kb: int


class BoardVM:
    """One emulated board: qemu with a root disk of its own, driven over its serial console."""

    def __init__(self, disk: Path, *, memory_mb: int = DEFAULT_MEMORY_MB, control_port: int,
                 voice_port: int, extra_disk: Path | None = None, log: Path | None = None):
        self.disk, self.memory_mb, self.extra_disk = disk, memory_mb, extra_disk
        self.control_port, self.voice_port = control_port, voice_port
        self.log_path = log or disk.with_suffix(".console.log")
        self.proc: subprocess.Popen | None = None
        self._out = bytearray()
        self._changed = threading.Condition()
        self._marker = 0

    @classmethod
    def fresh(cls, workdir: Path, **kwargs) -> "BoardVM":
        """A VM on a copy of the pristine root disk (sparse: ~0.3 s)."""
        workdir.mkdir(parents=True, exist_ok=True)
        disk = workdir / "root.ext4"
        subprocess.run(["cp", "--sparse=always", str(images() / "rootfs.ext4"), str(disk)],
                       check=True)
        return cls(disk, **kwargs)

    def argv(self) -> list[str]:
        img = images()
        net = (f"user,id=n0,restrict=on,"
               f"hostfwd=tcp:127.0.0.1:{self.control_port}-{GUEST_IP}:{DEFAULT_CONTROL_PORT},"
               f"guestfwd=tcp:{VOICE_IN_GUEST}-cmd:busybox nc 127.0.0.1 {self.voice_port}")
        argv = ["qemu-system-riscv64", "-M", "virt", "-smp", "1", "-m", f"{self.memory_mb}M",
                "-bios", "default", "-kernel", str(img / "Image"),
                "-initrd", str(img / "initramfs.cpio.gz"), "-append", "console=ttyS0 quiet",
                "-display", "none", "-nodefaults", "-serial", "stdio", "-no-reboot",
                "-drive", f"file={self.disk},format=raw,if=none,id=d0",
                "-device", "virtio-blk-pci,drive=d0",
                "-netdev", net, "-device", "virtio-net-pci,netdev=n0,romfile="]
        if self.extra_disk:
            argv += ["-drive", f"file={self.extra_disk},format=raw,if=none,id=d1,readonly=on",
                     "-device", "virtio-blk-pci,drive=d1"]
        return argv

    # ------------------------------------------------------------------ power and console

    def _power_on(self) -> float:
        """Start qemu with a fresh console buffer; returns the monotonic time it started."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self._changed:
            self._out.clear()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return t0

    def boot(self, timeout: float = 300) -> Boot:
        """Power on; returns once rcS has run and the console shell answers."""
        t0 = self._power_on()
        mem = self.wait_for(r"storybot-vm: MemAvailable after boot: (\d+) kB \(MemTotal (\d+) kB\)",
                            timeout)
        done = self.wait_for(r"storybot-vm: booted in ([\d.]+) s", timeout)
        self.wait_for(re.escape(PROMPT), timeout)
        self.sh("stty -echo", timeout=60)  # only the commands' output on the console
        return Boot(float(done.group(1)), time.monotonic() - t0, int(mem.group(1)),
                    int(mem.group(2)))

    def _read(self, proc: subprocess.Popen) -> None:
        with open(self.log_path, "ab") as log:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                with self._changed:
                    self._out += chunk
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def console_mark(self) -> int:
        """Where the console output is now: a start for wait_for and console."""
        with self._changed:
            return len(self._out)

    def console(self, start: int = 0, end: int | None = None) -> str:
        with self._changed:
            return self._out[start:end].decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> re.Match:
        """Until the console output (from byte start) matches pattern; raises on timeout or
        when qemu exits."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern.encode())
        with self._changed:
            while not (m := rx.search(self._out, start)):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self._out[-3000:].decode(errors="replace")
                    raise RuntimeError(f"board VM: no {pattern!r} on the console "
                                       f"(qemu exit {self.proc.poll()}):\n{tail}")
                self._changed.wait(min(left, 1.0))
            return re.match(pattern, m.group(0).decode(errors="replace"))

    def sh(self, command: str, timeout: float = 120, check: bool = True) -> str:
        """Runs a command in the console shell; its output (stdout and stderr)."""
        self._marker += 1
        end = f"@@{self._marker}@@"
        start = self.console_mark()
        # the quotes keep the echoed command line from matching the marker
        line = f"( {command} ) 2>&1; echo \"@@{self._marker}\"\"@@ $?\"\n"
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        m = self.wait_for(re.escape(end) + r" (\d+)", timeout, start)
        out = self.console(start)
        out = out[:out.find(end)].replace("\r", "")
        # drop the shell's prompts ("~ # ", or "# " and "/ # " on the systemd console)
        out = re.sub(r"^\s*((?:~|/\S*)? ?# )*", "", out.removeprefix(line.replace("\n", "")))
        if check and m.group(1) != "0":
            raise RuntimeError(f"board VM: {command!r} failed ({m.group(1)}):\n{out}")
        return out

    def mem_available_kb(self) -> int:
        return int(self.sh("awk '/^MemAvailable:/ { print $2 }' /proc/meminfo").split()[-1])

    def poweroff(self, timeout: float = 120) -> None:
        """A clean shutdown: rcK stops the services, the disk is synced and read-only."""
        self.proc.stdin.write(b"poweroff\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout)

    def cut_power(self) -> None:
        """SIGKILL to qemu: the disk keeps what the guest had written, nothing more."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    close = cut_power

    def __enter__(self) -> "BoardVM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the appliance

    def install(self, tarball_name: str, timeout: float = 900) -> str:
        """The bundle on /dev/vdb unpacked and installed by its install.sh under BusyBox sh."""
        stem = tarball_name.removesuffix(".tar.gz")
        return self.sh(f"mkdir -p /mnt/usb && mount -t ext4 -o ro /dev/vdb /mnt/usb && "
                       f"rm -rf /root/{stem} && tar -xzf /mnt/usb/{tarball_name} -C /root && "
                       f"umount /mnt/usb && busybox sh /root/{stem}/install.sh", timeout)

    def configure(self, settings: dict[str, str]) -> None:
        """Appends settings to /etc/storybot/storybot.env (later lines win)."""
        lines = "\n".join(f"{k}={v}" for k, v in settings.items())
        self.sh(f"printf '%s\\n' '# board-vm' {shlex.quote(lines)} >> /etc/storybot/storybot.env"
                " && sync")

    def pair(self, secret: bytes) -> None:
        """Pairs the installed board as its owner would: storybot pair --code, in the VM."""
        from .. import seal

        self.sh(f"/opt/storybot/current/bin/storybot pair --file {PAIRING_IN_GUEST} "
                f"--code {seal.to_code(secret)} && sync", timeout=300)

    def log_mark(self) -> int:
        """The size of the daemon's log now: give it to wait_ready around a restart."""
        return int(self.sh("wc -c < /var/log/storybot.log 2>/dev/null || echo 0").split()[-1])

    def wait_ready(self, timeout: float = 600, since: int | None = None) -> float:
        """Until the daemon's log says Ready and that it reached the voice host; the guest's
        uptime then. Only the log after since (a log_mark()) counts, by default only this
        boot's part (rcS marks it): the log on the disk keeps earlier boots' lines."""
        if since is None:
            read = ("awk 'NR == FNR { if ($0 == \"storybot-vm: boot\") n = FNR; next } FNR > n' "
                    "/var/log/storybot.log /var/log/storybot.log")
        else:
            read = f"tail -c +{since + 1} /var/log/storybot.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.sh(read)
            if "Ready:" in log and f"Connected to {VOICE_IN_GUEST}" in log:
                return float(self.sh("cut -d' ' -f1 /proc/uptime").split()[-1])
            time.sleep(2)
        raise RuntimeError("board VM: the daemon is not ready:\n" +
                           self.sh("tail -n 30 /var/log/storybot.log", check=False))

    def daemon_rss_kb(self, field: str = "VmRSS") -> int:
        """The daemon's resident set now (VmRSS) or at its highest so far (VmHWM)."""
        pid = self.sh("cat /run/storybot.pid").split()[-1]
        return int(self.sh(f"awk '/^{field}:/ {{ print $2 }}' /proc/{pid}/status").split()[-1])

    def disk_read_kb(self) -> int:
        """kB read from the VM's disks since boot (/sys/block/vd*/stat's sectors read): the
        model's pages and the classifier blocks the page cache did not hold."""
        sectors = self.sh("cat /sys/block/vd*/stat | awk '{ s += $3 } END { print s }'")
        return int(sectors.split()[-1]) // 2  # 512-byte sectors

    def oom_kills(self) -> int:
        return int(self.sh("dmesg | grep -c 'Out of memory' || true").split()[-1])


async def _ask(port: int, prompt: str, secret: bytes) -> tuple[int, str | None]:
    """A story from the board on 127.0.0.1:port (its control port, forwarded), as storybot
    ask asks for it, paired; its sentences and None when it was told whole, else why not
    (stopped, an error, a link that broke)."""

    settings = link.LinkSettings()
    client, conn = await link.open_link("127.0.0.1", port, settings, secret, "board")
    told = {"sentences": 0, "why": "the link ended before the story did"}

    async def handle(event: link.Event) -> bool:
        if event.type == link.STORY_SENTENCE:
            told["sentences"] += 1
        elif event.type == link.STORY_END:
            told["why"] = event.data.get("stopped")
        elif event.type == link.ERROR:
            told["why"] = f"error: {event.data.get('text')}"
        return event.type not in (link.STORY_END, link.ERROR)

    try:
        await conn.send(link.Event(link.STORY_REQUEST, {"text": prompt}))
        await conn.run(handle)
    except OSError as err:
        told["why"] = f"the link broke: {err}"
    finally:
        await client.disconnect()
    return told["sentences"], told["why"]


# ---------------------------------------------------------------------- storybot board-vm

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "board-vm", help="boot an emulated Duo (qemu-system-riscv64), install a bundle, "
                         "tell a story",
        description="Boots Debian's riscv64 kernel with BusyBox init and the riscv64 userland "
                    "in qemu-system-riscv64 with the Duo's free memory, installs the bundle "
                    "with its install.sh, reboots so S99storybot starts storybot serve, then "
                    "asks it for a story through a voice host on this machine (Piper, WAVs "
                    "into --wav-dir), or gives you the console. Needs tools/riscv/userland.sh; "
                    "makes tools/board-vm/build.sh's images on first use.")
    p.add_argument("scenario", nargs="?", default="story",
                   choices=["boot", "story", "console", "smallest"],
                   help="boot: boot (no install) and print boot time and MemAvailable; "
                        "story: install, boot, tell --stories stories and print the memory "
                        "figures; console: the serial console after the install; smallest: "
                        "lower -m by --step until a full story fails (default: %(default)s)")
    p.add_argument("--bundle", help="the tarball of `storybot bundle` (story, console)")
    p.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB,
                   help="the VM's RAM in MiB (default: %(default)s: ~36 MiB available)")
    p.add_argument("--step", type=int, default=4, help="MiB less per try (smallest)")
    p.add_argument("--steps", type=int, default=256, help="story positions (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--prompt", default="a little robot who loves the moon")
    p.add_argument("--stories", type=int, default=1, help="stories in a row (a soak)")
    p.add_argument("--wav-dir", default=None, help="where the voice host writes WAVs "
                                                    "(default: a temporary folder)")
    p.add_argument("--workdir", default=None, help="the VM's disks and console log "
                                                   "(default: a temporary folder, removed)")
    p.set_defaults(func=_cmd_board_vm)


def free_port() -> int:
    from .bundle import free_port as bundle_free_port
    return bundle_free_port()


def _cmd_board_vm(args: argparse.Namespace) -> int:
    if args.scenario == "boot":
        with tempfile.TemporaryDirectory(prefix="storybot-board-vm-") as tmp:
            with BoardVM.fresh(Path(args.workdir or tmp), memory_mb=args.memory,
                               control_port=free_port(), voice_port=free_port()) as vm:
                b = vm.boot()
                print(f"-m {vm.memory_mb}M: booted in {b.seconds:.1f} s guest time "
                      f"({b.wall_seconds:.0f} s wall), MemAvailable {b.mem_available_kb} kB, "
                      f"MemTotal {b.mem_total_kb} kB")
        return 0
    if not args.bundle:
        raise ValueError(f"board-vm {args.scenario} needs --bundle (a `storybot bundle` tarball)")
    tarball = Path(args.bundle).resolve()
    with tempfile.TemporaryDirectory(prefix="storybot-board-vm-") as tmp:
        work = Path(args.workdir or tmp)
        wav_dir = Path(args.wav_dir or work / "wav")
        wav_dir.mkdir(parents=True, exist_ok=True)
        voice_port = free_port()
        # The voice host here and the board in the VM are paired, as a user pairs them.
        secret = seal.new_secret()
        seal.save(work / "pairing.key", secret)
        voice = subprocess.Popen([sys.executable, "-m", "robot.cli", "voice-host", "--host",
                                  "127.0.0.1", "--port", str(voice_port), "--wav-dir",
                                  str(wav_dir), "--pairing", str(work / "pairing.key")],
                                 stdin=subprocess.DEVNULL)
        try:
            disk = _installed_disk(work, tarball, args, voice_port, secret)
            if args.scenario == "smallest":
                return _smallest(disk, args, voice_port, secret)
            with BoardVM(disk, memory_mb=args.memory, control_port=free_port(),
                         voice_port=voice_port) as vm:
                _boot_ready(vm)
                if args.scenario == "console":
                    return _interactive(vm)
                code = _stories(vm, args.stories, args.prompt, secret, args.steps)
            print(f"WAVs in {wav_dir}: {sorted(p.name for p in wav_dir.glob('*.wav'))}")
            return code
        finally:
            voice.send_signal(signal.SIGTERM)
            voice.wait(30)


def _installed_disk(work: Path, tarball: Path, args: argparse.Namespace, voice_port: int,
                   secret: bytes) -> Path:
    """A root disk with the bundle installed in the VM and the settings made, VM off."""
    with BoardVM.fresh(work, memory_mb=args.memory, control_port=free_port(),
                       voice_port=voice_port,
                       extra_disk=bundle_disk(tarball, work / "bundle.ext4")) as vm:
        b = vm.boot()
        print(f"booted in {b.seconds:.1f} s guest time ({b.wall_seconds:.0f} s wall), "
              f"MemAvailable {b.mem_available_kb} kB of MemTotal {b.mem_total_kb} kB "
              f"with -m {vm.memory_mb}M", flush=True)
        t0 = time.monotonic()
        print(vm.install(tarball.name), flush=True)
        print(f"installed in {time.monotonic() - t0:.0f} s", flush=True)
        vm.configure(board_settings(args.steps, args.temperature))
        vm.pair(secret)
        vm.poweroff()
        return vm.disk


def _boot_ready(vm: BoardVM) -> None:
    b = vm.boot()
    ready = vm.wait_ready()
    print(f"-m {vm.memory_mb}M: booted in {b.seconds:.1f} s guest time, MemAvailable "
          f"{b.mem_available_kb} kB before S99storybot; daemon ready at {ready:.1f} s uptime, "
          f"MemAvailable then {vm.mem_available_kb()} kB, daemon RSS {vm.daemon_rss_kb()} kB",
          flush=True)


def _stories(vm: BoardVM, count: int, prompt: str, secret: bytes, steps: int) -> int:
    """Tells count stories in a row; prints the memory and the disk reads of each and, for
    a soak, how far MemAvailable and the daemon's RSS moved between the first story and
    the last."""
    vm.sh("(/usr/local/sbin/memlow /run/memlow &)")
    after = []
    for n in range(count):
        t0 = time.monotonic()
        read0 = vm.disk_read_kb()
        sentences, why = asyncio.run(_ask(vm.control_port, prompt, secret))
        read = vm.disk_read_kb() - read0
        after.append((vm.mem_available_kb(), vm.daemon_rss_kb()))
        print(f"story {n + 1}: {sentences} sentences in {time.monotonic() - t0:.0f} s"
              f"{f' (NOT WHOLE: {why})' if why else ''}; lowest MemAvailable "
              f"{vm.sh('cat /run/memlow').split()[-1]} kB, now {after[-1][0]} kB, "
              f"daemon RSS {after[-1][1]} kB (peak so far {vm.daemon_rss_kb('VmHWM')} kB), "
              f"disk read {read} kB ({read / steps:.1f} kB a position), "
              f"OOM kills {vm.oom_kills()}", flush=True)
        if why:
            return 1
    if count > 1:
        avail, rss = zip(*after)
        print(f"after {count} stories: MemAvailable {min(avail)}..{max(avail)} kB "
              f"(spread {max(avail) - min(avail)} kB), daemon RSS {min(rss)}..{max(rss)} kB "
              f"(spread {max(rss) - min(rss)} kB)")
    return 0


def _smallest(disk: Path, args: argparse.Namespace, voice_port: int, secret: bytes) -> int:
    """-m lowered by --step MiB from --memory until a full story fails; each try on a
    fresh copy of the installed disk."""
    works = []
    memory = args.memory
    while memory > 0:
        copy = disk.with_name(f"try-{memory}.ext4")
        subprocess.run(["cp", "--sparse=always", str(disk), str(copy)], check=True)
        with BoardVM(copy, memory_mb=memory, control_port=free_port(), voice_port=voice_port,
                     log=disk.with_name(f"try-{memory}.console.log")) as vm:
            try:
                b = vm.boot()
                vm.wait_ready(300)
                vm.sh("(/usr/local/sbin/memlow /run/memlow &)")
                sentences, why = asyncio.run(_ask(vm.control_port, args.prompt, secret))
                low = vm.sh("cat /run/memlow").split()[-1]
                ooms = vm.oom_kills()
                ok = why is None and ooms == 0
                print(f"-m {memory}M: MemAvailable after boot {b.mem_available_kb} kB, lowest "
                      f"during the story {low} kB, OOM kills {ooms}, {sentences} sentences: "
                      f"{'a whole story' if ok else f'FAILED ({why})'}", flush=True)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                ok = False
                print(f"-m {memory}M: FAILED: {str(err)[:2000]}", flush=True)
        copy.unlink()
        if not ok:
            break
        works.append((memory, b.mem_available_kb))
        memory -= args.step
    if not works:
        return 1
    (top, top_avail), (least, least_avail) = works[0], works[-1]
    print(f"smallest working: -m {least}M, MemAvailable after boot {least_avail} kB; margin "
          f"against the first try, -m {top}M ({top_avail} kB): {top_avail - least_avail} kB")
    return 0


def _interactive(vm: BoardVM) -> int:
    """Copies the terminal to the VM's console and back until qemu exits (type
    `poweroff`, or Ctrl-] to cut the power). Commands piped in run until a poweroff."""
    print("console: `poweroff` or Ctrl-] to leave", flush=True)
    seen = vm.console_mark()

    def show() -> None:
        nonlocal seen
        while True:
            running = vm.proc.poll() is None
            now = vm.console_mark()
            sys.stdout.write(vm.console(seen, now))
            sys.stdout.flush()
            seen = now
            if not running:
                return
            time.sleep(0.1)

    shown = threading.Thread(target=show, daemon=True)
    shown.start()
    vm.sh("stty echo")
    fd = sys.stdin.fileno()
    # raw: each key goes to the VM as typed, Ctrl-C included
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved:
        tty.setraw(fd)
    try:
        while vm.proc.poll() is None:
            data = os.read(fd, 1024)
            if not data:  # the end of what was piped in: its poweroff ends the VM
                vm.proc.wait(600)
                break
            if b"\x1d" in data:
                break
            vm.proc.stdin.write(data)
            vm.proc.stdin.flush()
    finally:
        if saved:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
    vm.cut_power()
    shown.join(5)
    return 0


# ---------------------------------------------------------------------- the systemd variant

BUILD_SYSTEMD = REPO / "tools" / "board-vm" / "build-systemd.sh"
# more RAM is fine here (issue 15): systemd, journald and udevd take 8-14 MiB more
# MemAvailable after boot than BusyBox init (README.md here, "The systemd variant")
SYSTEMD_MEMORY_MB = 256


def systemd_disk() -> Path:
    """tools/board-vm/build-systemd.sh's root disk (made if needed; build.sh's too)."""
    proc = subprocess.run(["bash", str(BUILD_SYSTEMD)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("tools/board-vm/build-systemd.sh failed:\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    out = subprocess.run(["bash", str(BUILD_SYSTEMD), "--print-dir"], capture_output=True,
                         text=True, check=True).stdout.strip()
    return Path(out) / "rootfs-systemd.ext4"


class SystemdBoardVM(BoardVM):
    """The same machine with systemd as PID 1: build.sh's kernel and initramfs, the root
    disk of build-systemd.sh, its root shell on the console (storybot-vm-console)."""

    def __init__(self, disk: Path, *, memory_mb: int = SYSTEMD_MEMORY_MB, **kwargs):
        super().__init__(disk, memory_mb=memory_mb, **kwargs)

    @classmethod
    def fresh(cls, workdir: Path, **kwargs) -> "SystemdBoardVM":
        workdir.mkdir(parents=True, exist_ok=True)
        disk = workdir / "root-systemd.ext4"
        subprocess.run(["cp", "--sparse=always", str(systemd_disk()), str(disk)], check=True)
        return cls(disk, **kwargs)

    def boot(self, timeout: float = 600) -> Boot:
        """Power on; returns once systemd says the boot is done (`is-system-running
        --wait`): seconds is the guest's uptime then, MemAvailable is read then."""
        t0 = self._power_on()
        self.wait_for(re.escape(PROMPT), timeout)
        self.sh("stty -echo", timeout=60)
        state = self.sh("systemctl is-system-running --wait", timeout=timeout, check=False)
        uptime = float(self.sh("cut -d' ' -f1 /proc/uptime").split()[-1])
        if state.split()[-1:] != ["running"]:
            raise RuntimeError(f"board VM (systemd): the system is {state.strip()!r}:\n" +
                               self.sh("systemctl --failed --no-legend", check=False))
        mem = self.sh("awk '/^Mem(Available|Total):/ { print $2 }' /proc/meminfo").split()
        return Boot(uptime, time.monotonic() - t0, int(mem[1]), int(mem[0]))

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """systemctl show's properties of unit."""
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 180) -> None:
        self.proc.stdin.write(b"systemctl poweroff\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout)
