"""Running as a service: sd_notify, SIGTERM mid-story, the systemd units, the BusyBox script."""

import asyncio
import os
import re
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
        if time.monotonic() > deadline:  # a bound on the wait, not a speed to meet
            raise TimeoutError(f"not within {timeout} s")
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

        code, lines = asyncio.run(ask_then_terminate())
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert code == 0 and len(lines) >= 2  # the asker was told the story ended
    assert "Stopping story 1: the board is shutting down" in err
    assert "STOPPING=1" in notify_socket()
    assert "Threads still running" not in err and "Traceback" not in err


@pytest.mark.parametrize("setting, cache", [(None, "fp32"), ("fp16", "fp16")])
def test_the_kv_cache_setting_reaches_the_engine(notify_socket, setting, cache):
    # the fp32 model keeps an exact fp32 cache unless told; the board VM tells it fp16
    env = {"STORYBOT_KV_CACHE": setting} if setting else {}
    proc = storybot("serve", "--control", "", "--button", "none", env=env)
    try:
        wait_for(lambda: any(m.startswith("READY=1") for m in notify_socket()))
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    [status] = [m for m in notify_socket() if m.startswith("READY=1")]
    assert f"(llama2c-fp32, KV cache {cache})" in status


def test_ask_piped_into_head_ends_quietly():
    port = free_port()
    board = storybot("serve", "--control", f"127.0.0.1:{port}", "--button", "none",
                     "--steps", "256")
    try:
        def asked():
            # `storybot ask ... | head -1`: the reader closes the pipe after one line.
            asker = storybot("ask", "--board", f"127.0.0.1:{port}", "Once upon a time")
            first = asker.stdout.readline()
            asker.stdout.close()
            err = asker.stderr.read()
            asker.wait(timeout=30)
            asker.stderr.close()
            return asker.returncode, first, err

        wait_for(lambda: socket_open(port))
        code, first, err = asked()
    finally:
        board.terminate()
        board.communicate(timeout=20)
    assert first.startswith("Once upon a time"), err
    assert code == 0 and "error" not in err and "Broken pipe" not in err, err
    assert "Exception ignored" not in err and "Traceback" not in err, err


def socket_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


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


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("name", ["storybot-board.service", "storybot-voice.service"])
def test_the_units_are_exposed_at_most_1_5(name):
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                             str(SYSTEMD / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [score] = re.findall(rf"Overall exposure level for {name}: (\d+\.\d+)", result.stdout)
    assert float(score) <= 1.5, result.stdout
    # What issue 13 asked for, named, so a later edit cannot trade one for another.
    for check in ("PrivateDevices=", "ProtectProc=", "ProtectKernelTunables=",
                  "SystemCallFilter=~@privileged", "SystemCallFilter=~@resources",
                  "MemoryDenyWriteExecute="):
        [line] = [line for line in result.stdout.splitlines() if f" {check} " in f" {line} "]
        assert line.startswith("✓"), line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_a_story_is_told_under_the_units_seccomp_rules(tmp_path):
    """MemoryDenyWriteExecute and SystemCallFilter=~@privileged @resources, as systemd makes
    them (tests/sandbox.py): the engine, Piper's onnxruntime and the quiet sound probe (a
    ctypes callback) all work. No systemd here to run the units themselves."""
    pytest.importorskip("pyaudio")
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.!default { type hw card "no_such_card" }\n')  # no speaker: a WAV
    env = dict(os.environ, PYTHONPATH=str(REPO), STORYBOT_DENY="@privileged @resources",
               ALSA_CONFIG_PATH=str(conf))
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "sandbox.py"), sys.executable, "-m", "robot.cli",
         "tell", "Once upon a time", "-s", "1", "-n", "30", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "writing the story to story.wav" in result.stderr and "ALSA lib" not in result.stderr
    assert "2 sentences, 2 played" in result.stderr.splitlines()[-1]
    assert (tmp_path / "story.wav").stat().st_size > 100_000  # seconds of speech


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_sandbox_refuses_what_the_units_refuse(tmp_path):
    env = dict(os.environ, STORYBOT_DENY="@resources")
    probe = "import os; os.sched_setaffinity(0, {0})"
    result = subprocess.run([sys.executable, str(REPO / "tests" / "sandbox.py"), sys.executable,
                             "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PermissionError" in result.stderr, result.stderr


def test_the_env_file_sets_only_known_flags():
    names = {line.split("=", 1)[0].lstrip("#")
             for line in (SYSTEMD / "storybot.env").read_text().splitlines()
             if line.lstrip("#").startswith("STORYBOT_")}
    used = "".join((REPO / "robot" / f).read_text()
                   for f in ("board.py", "voicehost.py", "seal.py", "wyoserver.py"))
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
