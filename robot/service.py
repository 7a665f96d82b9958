"""Running as a service: signals, systemd's readiness and watchdog notices, a clean exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable

_LOGGER = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send state ("READY=1", "WATCHDOG=1", ...) to systemd; False if not run by it.

    The protocol of sd_notify(3): one datagram to the unix socket named in
    $NOTIFY_SOCKET, where a leading "@" means the abstract namespace.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as err:
        _LOGGER.warning("Cannot notify systemd (%s): %s", state, err)
        return False
    return True


def watchdog_seconds() -> float | None:
    """Time between watchdog notices systemd asks for (half its timeout), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were started by the service's main one)
    return int(usec) / 1e6 / 2


async def _watchdog(every: float) -> None:
    # Sent from the event loop itself: if the loop hangs, the notices stop and
    # systemd restarts the service, which is the point.
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(every)


def run(main: Callable[[], Awaitable[None]], name: str) -> int:
    """Run main() until it returns or SIGTERM/SIGINT arrives; return the exit code.

    main should call ready() once it serves. A signal cancels main, whose cleanup
    (finally blocks) then runs; 0 is returned for a signal, as systemd expects of a
    clean stop. Threads still alive afterwards are logged, since they would hold up
    the interpreter's exit.
    """
    code = asyncio.run(_run(main, name))
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if left:
        _LOGGER.warning("Threads still running at exit: %s", ", ".join(left))
    return code


async def _run(main: Callable[[], Awaitable[None]], name: str) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(main(), name=name)
    signalled: list[str] = []

    def on_signal(signum: signal.Signals) -> None:
        _LOGGER.info("%s: stopping %s", signum.name, name)
        signalled.append(signum.name)
        notify("STOPPING=1")
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    every = watchdog_seconds()
    watchdog = asyncio.create_task(_watchdog(every), name="watchdog") if every else None
    try:
        await task
        return 0
    except asyncio.CancelledError:
        if not signalled:
            raise
        return 0
    finally:
        if watchdog is not None:
            watchdog.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def serve(main: Awaitable[None], up: asyncio.Event, status: str) -> None:
    """Await main, telling systemd it is ready once up is set (READY=1 with status)."""
    task = asyncio.ensure_future(main)
    waiter = asyncio.create_task(up.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if waiter.done():
            ready(status)
        await task
    finally:
        waiter.cancel()
        task.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)


def ready(status: str) -> None:
    """Tell systemd the service is up, with a status line for systemctl status."""
    _LOGGER.info("Ready: %s", status)
    notify(f"READY=1\nSTATUS={status}")
