"""The robot's one button: a GPIO line read through libgpiod or sysfs, debounced into presses."""

from __future__ import annotations

import enum
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_LOGGER = logging.getLogger(__name__)


class ButtonEvent(enum.Enum):
    PRESS = "press"
    """Pressed and let go before the long-press time."""
    LONG_PRESS = "long-press"
    """Held for the long-press time; reported while still held, nothing on release."""


@dataclass(frozen=True)
class ButtonSettings:
    """Which line the button is on and how its level becomes presses."""

    backend: str = "auto"
    """"gpiod", "sysfs", "auto" (gpiod if the chip exists, else sysfs) or "none"."""
    line: int | None = None
    """Line offset on the chip (gpiod) or global GPIO number (sysfs); None: no button."""
    chip: str = "/dev/gpiochip0"
    """GPIO character device (gpiod)."""
    sysfs_root: str = "/sys/class/gpio"
    """Root of the sysfs GPIO tree (sysfs); tests point it at a fake tree."""
    active_low: bool = True
    """The line reads 0 while pressed (a button to ground with a pull-up)."""
    bias: str | None = None
    """"pull-up", "pull-down" or "none" (an external resistor); None: what the polarity
    needs, pull-up when active low, pull-down when active high. gpiod only: sysfs cannot
    set a bias (the board's pin configuration does)."""
    debounce_seconds: float = 0.03
    """How long a level must hold before it counts (s)."""
    long_press_seconds: float = 1.5
    """Holding this long makes a long press (s)."""
    guard_seconds: float = 0.4
    """A press that starts this soon after the last one is swallowed, and restarts the
    guard (s): a child mashing the button means one press, not a dozen."""
    poll_seconds: float = 0.01
    """How often the level is sampled while it may change (s)."""
    idle_wait_seconds: float = 0.5
    """Longest wait for an edge while the button rests (s); an edge wakes the wait at
    once, except on a sysfs line without interrupts, which is sampled every poll_seconds."""

    @property
    def enabled(self) -> bool:
        return self.backend != "none" and self.line is not None

    @property
    def pull(self) -> str:
        """The bias the line gets: bias if set, else the one the polarity needs."""
        if self.bias is None:
            return "pull-up" if self.active_low else "pull-down"
        if self.bias not in BIASES:
            raise ValueError(f"unknown bias {self.bias!r} (one of {', '.join(BIASES)})")
        return self.bias


BIASES = ("pull-up", "pull-down", "none")


class Debouncer:
    """Turns sampled levels into presses. Pure: the caller gives the times, no I/O.

    A level counts once it held for debounce_seconds, so contact bounce never reaches
    the robot. A press is reported when released (only then is it known not to be long);
    a long press as soon as the hold time is reached.
    """

    def __init__(self, settings: ButtonSettings) -> None:
        self.settings = settings
        self._raw = False
        self._raw_since = 0.0
        self._stable = False
        self._down_at = 0.0
        self._last_down: float | None = None
        self._swallowed = False  # this press fell in the guard: report nothing for it
        self._long_sent = False

    @property
    def idle(self) -> bool:
        """Released and settled: nothing can happen until the level changes."""
        return not self._raw and not self._stable

    def update(self, pressed: bool, now: float) -> list[ButtonEvent]:
        """Take the level sampled at now (s, monotonic); return the events it completes."""
        if pressed != self._raw:
            self._raw, self._raw_since = pressed, now
        events = []
        if self._raw != self._stable and now - self._raw_since >= self.settings.debounce_seconds:
            self._stable = self._raw
            if self._stable:
                self._down_at = self._raw_since
                last, self._last_down = self._last_down, self._down_at
                self._swallowed = last is not None and self._down_at - last < self.settings.guard_seconds
                self._long_sent = False
                if self._swallowed:
                    _LOGGER.debug("Press within %.2f s of the last one: swallowed",
                                  self.settings.guard_seconds)
            elif not self._long_sent and not self._swallowed:
                events.append(ButtonEvent.PRESS)
        if (self._stable and not self._long_sent and not self._swallowed
                and now - self._down_at >= self.settings.long_press_seconds):
            self._long_sent = True
            events.append(ButtonEvent.LONG_PRESS)
        return events


class Line(Protocol):
    """A button input: its level now, and a wait for the next chance of a change."""

    def pressed(self) -> bool: ...

    def now(self) -> float:
        """The time of a sample (s, monotonic); a test's line keeps a clock of its own."""

    def wait(self, timeout: float) -> None:
        """Return within timeout (s), sooner if the level may have changed."""

    def close(self) -> None: ...


def gpiod_line_settings(settings: ButtonSettings):
    """The gpiod.LineSettings of the button's line: an input with edge events and a bias."""
    import gpiod
    from gpiod.line import Bias, Direction, Edge

    bias = {"pull-up": Bias.PULL_UP, "pull-down": Bias.PULL_DOWN, "none": Bias.DISABLED}
    return gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.BOTH,
                              bias=bias[settings.pull], active_low=settings.active_low)


class GpiodLine:
    """A line through libgpiod's character device (the gpiod package, v2 API)."""

    now = staticmethod(time.monotonic)

    def __init__(self, settings: ButtonSettings) -> None:
        # Imported here: only a board with a GPIO chip needs the library.
        import gpiod
        from gpiod.line import Value

        self._active = Value.ACTIVE
        self._offset = settings.line
        self._request = gpiod.request_lines(
            settings.chip, consumer="storybot",
            config={settings.line: gpiod_line_settings(settings)})
        _LOGGER.info("Button on %s line %d (gpiod, %s)", settings.chip, settings.line,
                     settings.pull)

    def pressed(self) -> bool:
        return self._request.get_value(self._offset) == self._active

    def wait(self, timeout: float) -> None:
        if self._request.wait_edge_events(timeout):
            self._request.read_edge_events()  # the level is read afresh; the events only wake us

    def close(self) -> None:
        self._request.release()


class SysfsLine:
    """A line through the old sysfs interface (/sys/class/gpio), woken by its interrupts.

    The stock Milk-V Duo image has no libgpiod; its kernel still has sysfs GPIO. With
    `edge` set, the kernel marks `value` with POLLPRI on each edge, so a resting button
    costs no CPU; a line that cannot interrupt is sampled every poll_seconds instead.
    """

    now = staticmethod(time.monotonic)

    def __init__(self, settings: ButtonSettings) -> None:
        root = Path(settings.sysfs_root)
        base = root / f"gpio{settings.line}"
        if not base.exists():
            (root / "export").write_text(f"{settings.line}\n")
            # udev may take a moment to make the new directory usable.
            deadline = time.monotonic() + 1.0
            while not (base / "value").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        (base / "direction").write_text("in\n")
        self._poll_seconds = settings.poll_seconds
        self._poller: select.poll | None = None
        try:
            (base / "edge").write_text("both\n")
            interrupts = True
        except OSError as err:  # no edge file, or EIO: the line has no interrupt
            _LOGGER.warning("GPIO %d cannot interrupt (%s); sampling it every %g s",
                            settings.line, err, settings.poll_seconds)
            interrupts = False
        self._value = os.open(base / "value", os.O_RDONLY | os.O_CLOEXEC)
        self._active_low = settings.active_low
        if interrupts:
            self._poller = select.poll()
            self._poller.register(self._value, select.POLLPRI | select.POLLERR)
        self.pressed()  # a read clears the edge pending since open
        _LOGGER.info("Button on GPIO %d (sysfs under %s, %s)", settings.line, root,
                     "edge interrupts" if self._poller else "sampled")

    @property
    def interrupts(self) -> bool:
        """True when edges wake the wait, False when the line is sampled."""
        return self._poller is not None

    def pressed(self) -> bool:
        high = os.pread(self._value, 1, 0) == b"1"
        return high != self._active_low

    def wait(self, timeout: float) -> None:
        if self._poller is None:
            time.sleep(min(timeout, self._poll_seconds))
        else:
            self._poller.poll(timeout * 1000)  # pressed() then reads, which rearms the edge

    def close(self) -> None:
        os.close(self._value)


def open_line(settings: ButtonSettings) -> Line | None:
    """The line settings name, or None when there is no button to read."""
    if not settings.enabled:
        return None
    backend = settings.backend
    if backend == "auto":
        backend = "gpiod" if Path(settings.chip).exists() else "sysfs"
    if backend == "gpiod":
        return GpiodLine(settings)
    if backend == "sysfs":
        return SysfsLine(settings)
    raise ValueError(f"unknown button backend {settings.backend!r}")


class ButtonWatcher:
    """Samples a line in a thread of its own and reports each press to a callback.

    report(event) is called in that thread; it must only hand the event on (the board
    passes it to its event loop). A failing line is reopened after a pause.
    """

    def __init__(self, settings: ButtonSettings, report: Callable[[ButtonEvent], None],
                 line: Line | None = None) -> None:
        self.settings = settings
        self._report = report
        self._line = line
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="button")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._line is None:
                    self._line = open_line(self.settings)
                self._watch(self._line)
            except Exception:
                _LOGGER.exception("Button line failed; reopening it in 1 s")
                self._close()
                self._stop.wait(1.0)
        self._close()

    def _watch(self, line: Line) -> None:
        debouncer = Debouncer(self.settings)
        while not self._stop.is_set():
            idle = debouncer.idle
            line.wait(self.settings.idle_wait_seconds if idle else self.settings.poll_seconds)
            for event in debouncer.update(line.pressed(), line.now()):
                _LOGGER.info("Button: %s", event.value)
                self._report(event)

    def _close(self) -> None:
        if self._line is not None:
            self._line.close()
            self._line = None
