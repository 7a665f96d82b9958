"""Button lines for tests, standing in for a GPIO line that is not here."""

import threading
import time


class FakeLine:
    """A line the test sets by hand (level), sampled on the real clock."""

    now = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.level = False

    def pressed(self) -> bool:
        return self.level

    def wait(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.005))

    def close(self) -> None:
        pass


class ScriptedLine:
    """A line that plays a script of (pressed, seconds) on a clock of its own.

    Each wait moves the clock on by its timeout, or to the next change of level if that
    comes first (an edge wakes the wait), so the watcher samples exactly the script
    however slowly the machine runs. done is set once the script has played; the line
    then rests at its last level.
    """

    def __init__(self, script: list[tuple[bool, float]]) -> None:
        self._changes = []
        at = 0.0
        for level, seconds in script:
            self._changes.append((at, level))
            at += seconds
        self._end = at
        self._clock = 0.0
        self.level = script[0][0]
        self.done = threading.Event()

    def pressed(self) -> bool:
        return self.level

    def now(self) -> float:
        return self._clock

    def wait(self, timeout: float) -> None:
        if self.done.is_set():
            time.sleep(min(timeout, 0.005))  # a resting button: do not spin the watcher
        change = next((at for at, _ in self._changes if at > self._clock), None)
        self._clock += timeout
        if change is not None and change < self._clock:
            self._clock = change
        self.level = [level for at, level in self._changes if at <= self._clock][-1]
        if self._clock >= self._end:
            self.done.set()

    def close(self) -> None:
        pass
