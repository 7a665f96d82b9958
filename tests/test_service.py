"""Running as a service: sd_notify, SIGTERM mid-story, the systemd units, the BusyBox script."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_voicehost import FAST, SECRET, free_port

from robot import link, seal, service
from robot.ask import ask

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A datagram socket standing in for systemd's; returns a reader of its messages."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    got = []

    def messages():
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return got

    yield messages
    sock.close()


def test_notify_sends_one_datagram(notify_socket):
    assert service.notify("READY=1\nSTATUS=hello")
    assert notify_socket() == ["READY=1\nSTATUS=hello"]


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"storybot-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert service.notify("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"


def test_without_systemd_notify_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not service.notify("READY=1")


def test_a_missing_socket_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert not service.notify("READY=1")
    assert "Cannot notify systemd" in caplog.text


def test_watchdog_interval_is_half_the_timeout(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert service.watchdog_seconds() == 15
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert service.watchdog_seconds() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert service.watchdog_seconds() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert service.watchdog_seconds() is None


def storybot(*args, env=None):
    """storybot from this work tree as a subprocess (its own logs on stderr)."""
    environ = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "robot.cli", *args], cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_during_a_story_exits_cleanly(notify_socket, tmp_path):
    port = free_port()
    proc = storybot("serve", "--control", f"127.0.0.1:{port}", "--button", "none",
                    "--steps", "256", env={"WATCHDOG_USEC": "400000"})
    try:
        wait_for(lambda: any(m.startswith("READY=1") for m in notify_socket()))
        wait_for(lambda: "WATCHDOG=1" in notify_socket())

        async def ask_then_terminate():
            lines = []

            class Out:
                def write(self, text):
                    if text.strip():
                        lines.append(text)
                        if len(lines) == 2:  # the story is under way
                            proc.send_signal(signal.SIGTERM)

                def flush(self):
                    pass

            return await ask(f"127.0.0.1:{port}", "Once upon a time", FAST, out=Out()), lines

        started = time.monotonic()
        code, lines = asyncio.run(ask_then_terminate())
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10
    assert code == 0 and len(lines) >= 2  # the asker was told the story ended
    assert "Stopping story 1: the board is shutting down" in err
    assert "STOPPING=1" in notify_socket()
    assert "Threads still running" not in err and "Traceback" not in err


def test_the_voice_host_stops_cleanly_on_sigterm(notify_socket, tmp_path):
    port = free_port()
    seal.save(tmp_path / "pairing.key", SECRET)
    proc = storybot("voice-host", "--host", "127.0.0.1", "--port", str(port),
                    "--wav-dir", str(tmp_path), "--pairing", str(tmp_path / "pairing.key"))

    async def paired_board_then_terminate():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        stream = link.Stream(reader, writer, FAST)
        board = link.SealedPeer(stream, await link.pair(stream, SECRET, is_client=True))
        await board.write_event(link.Event(link.PING))
        while (await board.read_event()).type != link.PONG:  # the host took the pairing
            pass
        proc.send_signal(signal.SIGTERM)  # while a paired board is connected
        result = await asyncio.to_thread(proc.communicate, timeout=20)
        writer.close()
        return result

    try:
        wait_for(lambda: any(m.startswith("READY=1") for m in notify_socket()))
        out, err = asyncio.run(paired_board_then_terminate())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "gone" in err and "Threads still running" not in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists, so the units are checked in a root of their own
    # where /usr/local/bin/storybot does, beside the system's own units they refer to.
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system",
                    symlinks=True)
    exe = root / "usr" / "local" / "bin" / "storybot"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    names = ["storybot-board.service", "storybot-voice.service"]
    for name in names:
        shutil.copy(SYSTEMD / name, units / name)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *names],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    for name in names:
        text = (SYSTEMD / name).read_text()
        for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes",
                        "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
                        "PrivateTmp=yes", "RestrictAddressFamilies=",
                        "EnvironmentFile=/etc/storybot/storybot.env"):
            assert setting in text, (name, setting)


def test_the_env_file_sets_only_known_flags():
    names = {line.split("=", 1)[0].lstrip("#")
             for line in (SYSTEMD / "storybot.env").read_text().splitlines()
             if line.lstrip("#").startswith("STORYBOT_")}
    used = "".join((REPO / "robot" / f).read_text()
                   for f in ("board.py", "voicehost.py", "seal.py"))
    used += (REPO / "robot" / "models.py").read_text()
    assert names and all(f'"{name}"' in used for name in names), names


@pytest.mark.parametrize("shell", ["busybox sh", "dash"])
def test_the_busybox_init_script_starts_respawns_and_stops(shell, tmp_path):
    if shutil.which(shell.split()[0]) is None:
        pytest.skip(f"needs {shell}")
    port = free_port()
    env_file = tmp_path / "storybot.env"
    env_file.write_text(f"STORYBOT_CONTROL=127.0.0.1:{port}\nSTORYBOT_BUTTON=none\n"
                        "STORYBOT_STEPS=24\n")
    env = dict(os.environ, PYTHONPATH=str(REPO), STORYBOT_ENV_FILE=str(env_file),
               STORYBOT_RUN_DIR=str(tmp_path / "run"), STORYBOT_LOG=str(tmp_path / "log"),
               STORYBOT_CMD=f"{sys.executable} -m robot.cli", STORYBOT_RESPAWN_DELAY="0.2")
    script = [*shell.split(), str(SYSTEMD / "S99storybot")]

    def run(action):
        return subprocess.run([*script, action], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=30)

    pidfile = tmp_path / "run" / "storybot.pid"

    def told():
        try:
            return asyncio.run(ask(f"127.0.0.1:{port}", "Once upon a time", FAST)) == 0
        except OSError:
            return False

    try:
        assert run("start").returncode == 0
        wait_for(told)
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)  # a crash
        wait_for(lambda: pidfile.exists() and int(pidfile.read_text()) != first)
        wait_for(told)
        assert "restarting" in (tmp_path / "log").read_text()
        assert "is running" in run("status").stdout
        second = int(pidfile.read_text())
    finally:
        stopped = run("stop")
    assert stopped.returncode == 0 and "OK" in stopped.stdout
    assert run("status").returncode == 3
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
