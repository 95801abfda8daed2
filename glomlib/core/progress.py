"""Step progress a person can see while papermill runs a notebook.

One line per event (epoch, fold), appended to ``$GLOMLIB_PROGRESS_FILE``, which ``glomlib run`` tails to the
terminal; nothing goes into the rendered report."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "GLOMLIB_PROGRESS_FILE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def report(msg: str) -> None:
    """Append one progress line (with the time) to ``$GLOMLIB_PROGRESS_FILE``; a no-op when it is not set."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    except OSError:  # progress is a courtesy: never fail a step over it
        pass


def time_left(done: float, total: float, elapsed_s: float) -> str:
    """'~3 min left' from the share done so far and the time it took ('' before anything is done)."""
    if done <= 0 or total <= done:
        return "" if done <= 0 else "done"
    s = elapsed_s / done * (total - done)
    if s < 90:
        return f"~{s:.0f} s left"
    if s < 5400:
        return f"~{s / 60:.0f} min left"
    return f"~{s / 3600:.1f} h left"


class Tail:
    """Follow a progress file in a background thread, passing each new line to ``emit``; ``stop()`` emits what
    is left and ends the thread. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, emit: Callable[[str], None], interval_s: float = 0.5):
        self.path, self.emit, self.interval_s = Path(path), emit, interval_s
        self._pos = 0
        self._partial = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glomlib-progress-tail", daemon=True)

    def _drain(self) -> None:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self._pos)
                chunk = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()  # an unfinished last line waits for its newline
        for line in lines:
            if line.strip():
                self.emit(line)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._drain()

    def start(self) -> Tail:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        if self._partial.strip():
            self.emit(self._partial)
            self._partial = ""

    def __enter__(self) -> Tail:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
