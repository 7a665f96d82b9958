"""Button: the pure debouncer, the sysfs backend on a fake tree, the watcher thread."""

import threading
import time

import pytest

from robot.button import (
    ButtonEvent,
    ButtonSettings,
    ButtonWatcher,
    Debouncer,
    FakeLine,
    SysfsLine,
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


def test_sysfs_exports_the_line_and_reads_it_active_low(sysfs):
    root, make = sysfs
    # The "kernel" makes the directory once the line is exported.
    threading.Timer(0.05, make, args=(7,)).start()
    line = SysfsLine(ButtonSettings(backend="sysfs", line=7, sysfs_root=str(root)))
    try:
        assert (root / "export").read_text() == "7\n"
        assert (root / "gpio7" / "direction").read_text() == "in\n"
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


def test_auto_falls_back_to_sysfs_without_a_gpio_chip(sysfs, tmp_path):
    root, make = sysfs
    make(4)
    line = open_line(ButtonSettings(line=4, chip=str(tmp_path / "gpiochip9"),
                                    sysfs_root=str(root)))
    try:
        assert isinstance(line, SysfsLine)
    finally:
        line.close()


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


def test_watcher_reports_presses_from_a_sysfs_tree(sysfs):
    root, make = sysfs
    value = make(9) / "value"
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


def test_watcher_with_a_fake_line_and_mashing():
    line = FakeLine()
    watcher, events = _watch(line, ButtonSettings(line=0, guard_seconds=0.4))
    try:
        for _ in range(10):
            line.level = True
            time.sleep(0.05)
            line.level = False
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        watcher.stop()
    assert events == [PRESS]
    assert not any(t.name == "button" for t in threading.enumerate())


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
