"""Button: the pure debouncer, the sysfs backend on a fake tree, gpiod's configuration,
the watcher thread."""

import select
import threading
import time
import types

import gpiod
import pytest
from buttonlines import FakeLine, ScriptedLine
from gpiod.line import Bias, Direction, Edge

from robot import button
from robot.button import (
    ButtonEvent,
    ButtonSettings,
    ButtonWatcher,
    Debouncer,
    GpiodLine,
    SysfsLine,
    gpiod_line_settings,
    open_line,
)

PRESS, LONG = ButtonEvent.PRESS, ButtonEvent.LONG_PRESS
SETTINGS = ButtonSettings(line=5, debounce_seconds=0.03, long_press_seconds=1.0,
                          guard_seconds=0.4)


def run(levels, settings=SETTINGS, step=0.005, until=None):
    """Feed (level, duration) runs sampled every step; return [(time, event)]."""
    debouncer = Debouncer(settings)
    events, now = [], 0.0
    for level, duration in levels:
        end = now + duration
        while now < end:
            events += [(round(now, 3), e) for e in debouncer.update(level, now)]
            now += step
    return events


def kinds(events):
    return [e for _, e in events]


def test_a_clean_press_is_reported_on_release():
    events = run([(False, 0.1), (True, 0.2), (False, 0.1)])
    assert kinds(events) == [PRESS]
    assert 0.3 <= events[0][0] <= 0.34  # release + debounce


def test_contact_bounce_makes_one_press():
    bounce = [(True, 0.002), (False, 0.003)] * 6  # 30 ms of chatter on both edges
    events = run([(False, 0.05), *bounce, (True, 0.2), *bounce, (False, 0.2)])
    assert kinds(events) == [PRESS]


def test_a_glitch_shorter_than_the_debounce_is_ignored():
    assert run([(False, 0.05), (True, 0.02), (False, 0.3)]) == []


def test_a_long_press_fires_while_held_and_release_adds_nothing():
    events = run([(False, 0.05), (True, 1.5), (False, 0.2)])
    assert kinds(events) == [LONG]
    assert 1.05 <= events[0][0] <= 1.1  # pressed at 0.05, held 1.0 s


def test_mashing_counts_as_one_press():
    mash = [(True, 0.06), (False, 0.06)] * 15  # ~8 presses a second for 1.8 s
    events = run([(False, 0.05), *mash, (False, 0.5)])
    assert kinds(events) == [PRESS]


def test_a_press_after_the_guard_counts_again():
    events = run([(False, 0.05), (True, 0.1), (False, 0.5), (True, 0.1), (False, 0.2)])
    assert kinds(events) == [PRESS, PRESS]


def test_holding_after_mashing_is_swallowed_with_the_mash():
    events = run([(False, 0.05), (True, 0.1), (False, 0.1), (True, 1.5), (False, 0.1)])
    assert kinds(events) == [PRESS]


def test_idle_only_when_released_and_settled():
    debouncer = Debouncer(SETTINGS)
    assert debouncer.idle
    debouncer.update(True, 0.0)
    assert not debouncer.idle
    debouncer.update(False, 0.01)
    assert debouncer.idle


@pytest.fixture
def sysfs(tmp_path):
    """A fake /sys/class/gpio: export creates gpioN/ as the kernel would."""
    root = tmp_path / "gpio"
    root.mkdir()
    export = root / "export"
    export.write_text("")

    def make(number, value="1"):
        # Built aside and renamed into place, so it appears whole, as the kernel's does.
        draft = tmp_path / f"draft{number}"
        draft.mkdir()
        (draft / "direction").write_text("out\n")
        (draft / "value").write_text(value + "\n")
        return draft.rename(root / f"gpio{number}")

    return root, make


def test_sysfs_exports_the_line_and_asks_for_edge_interrupts(sysfs):
    root, make = sysfs
    # The "kernel" makes the directory once the line is exported.
    threading.Timer(0.05, make, args=(7,)).start()
    line = SysfsLine(ButtonSettings(backend="sysfs", line=7, sysfs_root=str(root)))
    try:
        assert (root / "export").read_text() == "7\n"
        assert (root / "gpio7" / "direction").read_text() == "in\n"
        assert (root / "gpio7" / "edge").read_text() == "both\n"
        assert line.interrupts
        assert not line.pressed()
        (root / "gpio7" / "value").write_text("0\n")
        assert line.pressed()
    finally:
        line.close()


def test_sysfs_active_high(sysfs):
    root, make = sysfs
    make(3, value="1")
    line = SysfsLine(ButtonSettings(backend="sysfs", line=3, sysfs_root=str(root),
                                    active_low=False))
    try:
        assert line.pressed()
    finally:
        line.close()


def test_a_sysfs_line_without_interrupts_is_sampled(sysfs, caplog):
    root, make = sysfs
    (make(6) / "edge").mkdir()  # writing it fails, as the kernel's EIO does
    line = SysfsLine(ButtonSettings(backend="sysfs", line=6, sysfs_root=str(root)))
    try:
        assert not line.interrupts
        assert "GPIO 6 cannot interrupt" in caplog.text and "every 0.01 s" in caplog.text
    finally:
        line.close()


class Kernel:
    """Stands in for select.poll on a sysfs value file and for the button behind it.

    It plays a script of (pressed, seconds) on a clock of its own: a poll returns
    POLLPRI at the next edge (having written the new level to value, active low), or
    moves the clock on by its timeout when no edge comes first.
    """

    def __init__(self, value, script):
        self.value, self.clock, self.registered = value, 0.0, []
        self.edges, at = [], 0.0
        for level, seconds in script:
            self.edges.append((at, level))
            at += seconds
        self.end = at
        self.done = threading.Event()

    def __call__(self):  # select.poll()
        return self

    def register(self, fd, events):
        self.registered.append((fd, events))

    def poll(self, timeout_ms):
        if self.done.is_set():
            time.sleep(0.005)
            return []
        edge = next(((at, level) for at, level in self.edges if at > self.clock), None)
        self.clock += timeout_ms / 1000
        if self.clock >= self.end:
            self.done.set()
        if edge is None or edge[0] > self.clock:
            return []
        self.clock = edge[0]
        self.value.write_text("0\n" if edge[1] else "1\n")
        return [(self.registered[0][0], select.POLLPRI | select.POLLERR)]


def test_sysfs_edges_wake_the_watcher(sysfs, monkeypatch):
    root, make = sysfs
    value = make(9) / "value"
    # Pressed for 0.2 s, then a long press; the resting waits are longer than the script,
    # so only the edges can wake the watcher in time.
    kernel = Kernel(value, [(False, 0.1), (True, 0.2), (False, 0.5), (True, 2.0),
                            (False, 100.0)])
    monkeypatch.setattr(button, "select", types.SimpleNamespace(
        poll=kernel, POLLPRI=select.POLLPRI, POLLERR=select.POLLERR))
    settings = ButtonSettings(backend="sysfs", line=9, sysfs_root=str(root),
                              idle_wait_seconds=60, long_press_seconds=1.0)
    line = SysfsLine(settings)
    line.now = lambda: kernel.clock
    watcher, events = _watch(line, settings)
    try:
        assert kernel.done.wait(10)
    finally:
        watcher.stop()
    assert kernel.registered == [(line._value, select.POLLPRI | select.POLLERR)]
    assert events == [PRESS, LONG]


def test_auto_falls_back_to_sysfs_without_a_gpio_chip(sysfs, tmp_path):
    root, make = sysfs
    make(4)
    line = open_line(ButtonSettings(line=4, chip=str(tmp_path / "gpiochip9"),
                                    sysfs_root=str(root)))
    try:
        assert isinstance(line, SysfsLine)
    finally:
        line.close()


@pytest.mark.parametrize("active_low, bias, pull", [
    (True, None, Bias.PULL_UP),     # a button to ground
    (False, None, Bias.PULL_DOWN),  # a button to 3.3 V
    (True, "pull-down", Bias.PULL_DOWN),
    (False, "pull-up", Bias.PULL_UP),
    (True, "none", Bias.DISABLED),  # an external resistor
])
def test_gpiod_bias_follows_the_polarity_unless_set(active_low, bias, pull):
    line_settings = gpiod_line_settings(ButtonSettings(line=5, active_low=active_low,
                                                       bias=bias))
    assert line_settings.bias == pull and line_settings.active_low == active_low
    assert line_settings.direction == Direction.INPUT
    assert line_settings.edge_detection == Edge.BOTH


def test_an_unknown_bias_is_refused():
    with pytest.raises(ValueError, match="pull-up, pull-down, none"):
        gpiod_line_settings(ButtonSettings(line=5, bias="pull-sideways"))


def test_gpiod_requests_the_line_as_configured(monkeypatch):
    """The request the real gpiod package builds for the chip (no chip here: the kernel's
    part is left to a GPIO simulator)."""
    from gpiod import _ext
    from gpiod.line_settings import _line_settings_to_ext

    requested = {}

    class Request:
        def release(self):
            requested["released"] = True

    def request_lines(path, config, consumer=None, **_):
        requested.update(path=path, config=config, consumer=consumer)
        for offset, line_settings in config.items():  # what Chip.request_lines does
            _ext.LineConfig().add_line_settings([offset], _line_settings_to_ext(line_settings))
        return Request()

    monkeypatch.setattr(gpiod, "request_lines", request_lines)
    line = GpiodLine(ButtonSettings(backend="gpiod", line=15, chip="/dev/gpiochip2",
                                    active_low=False))
    line.close()
    [(offset, line_settings)] = requested["config"].items()
    assert (requested["path"], requested["consumer"], offset) == ("/dev/gpiochip2", "storybot", 15)
    assert line_settings.bias == Bias.PULL_DOWN and not line_settings.active_low
    assert requested["released"]


def test_no_line_means_no_button():
    assert open_line(ButtonSettings()) is None
    assert open_line(ButtonSettings(line=3, backend="none")) is None


def test_gpiod_reports_a_missing_chip(tmp_path):
    with pytest.raises(OSError):
        open_line(ButtonSettings(backend="gpiod", line=1, chip=str(tmp_path / "gpiochip0")))


def _watch(line, settings):
    events = []
    watcher = ButtonWatcher(settings, events.append, line)
    watcher.start()
    return watcher, events


def test_watcher_reports_presses_from_a_sampled_sysfs_tree(sysfs):
    root, make = sysfs
    directory = make(9)
    (directory / "edge").mkdir()  # no interrupts: sampled
    value = directory / "value"
    settings = ButtonSettings(backend="sysfs", line=9, sysfs_root=str(root), poll_seconds=0.005)
    watcher, events = _watch(None, settings)
    try:
        time.sleep(0.05)
        value.write_text("0\n")  # pressed (active low)
        time.sleep(0.15)
        value.write_text("1\n")
        deadline = time.monotonic() + 2
        while not events and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert events == [PRESS]


def test_watcher_with_a_mashed_line():
    # A dozen presses of 40 ms, 40 ms apart, then a rest past the guard: on the line's
    # own clock, so a loaded machine sees the same presses.
    line = ScriptedLine([(True, 0.04), (False, 0.04)] * 12 + [(False, 1.0)])
    watcher, events = _watch(line, ButtonSettings(line=0, guard_seconds=0.4))
    try:
        assert line.done.wait(10)
    finally:
        watcher.stop()
    assert events == [PRESS]
    assert not any(t.name == "button" for t in threading.enumerate())


def test_watcher_with_presses_past_the_guard():
    line = ScriptedLine([(False, 0.1), (True, 0.1), (False, 0.5), (True, 0.1), (False, 1.0)])
    watcher, events = _watch(line, ButtonSettings(line=0, guard_seconds=0.4))
    try:
        assert line.done.wait(10)
    finally:
        watcher.stop()
    assert events == [PRESS, PRESS]


def test_watcher_reopens_a_line_that_fails(sysfs, caplog):
    root, make = sysfs
    make(2)

    class Failing(FakeLine):
        def pressed(self):
            raise OSError("line gone")

    watcher, events = _watch(Failing(), ButtonSettings(backend="sysfs", line=2,
                                                       sysfs_root=str(root)))
    try:
        deadline = time.monotonic() + 3
        while "reopening" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert "Button line failed; reopening it" in caplog.text


def test_serve_takes_the_bias(monkeypatch):
    from robot.cli import build_parser

    monkeypatch.delenv("STORYBOT_BUTTON_BIAS", raising=False)
    parser = build_parser(["serve"])
    assert parser.parse_args(["serve"]).bias is None  # follows the polarity
    assert parser.parse_args(["serve", "--bias", "none"]).bias == "none"
    monkeypatch.setenv("STORYBOT_BUTTON_BIAS", "pull-down")
    assert build_parser(["serve"]).parse_args(["serve"]).bias == "pull-down"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--bias", "up"])
