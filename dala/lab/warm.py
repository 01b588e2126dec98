"""Warming a shared Lab: the answers a class asks first, computed once in the background.

A class opens the lab at 1:1 with the default strategy and moves the ratio a step or two, each
student with a strategy of their own: a few dozen discrete questions, the same for everyone.
Answered once into the Lab's cache (:meth:`dala.lab.scoring.Lab.score`, shared by every session
and single-flight), a slider move then costs the page's drawing only (measured on the 2-core
server: a new answer and its figures ~90 ms of CPU, a cached one a fraction of that; Python runs
one session at a time, so 30 students at once wait for about 30 of those).

:class:`Warmer` walks the questions nearest the page's start first (every strategy at 1:1, then
one step either side, ...), one at a time on one thread (a fit is single-threaded: see
:func:`dala.lab.heads.single_thread`), and stops at once when asked (the page stops it when its
Lab is replaced; the interpreter at exit). ``DALA_LAB_WARM=0`` turns it off.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import Callable, Iterable

from dala.errors import DalaError

_LIVE: "weakref.WeakSet[Warmer]" = weakref.WeakSet()


def warm_enabled() -> bool:
    """False when ``DALA_LAB_WARM`` is ``0`` / ``false`` / ``no`` / ``off``."""
    return os.environ.get("DALA_LAB_WARM", "1").strip().lower() not in ("0", "false", "no", "off")


def nearest_first(strategies: Iterable[str], ratios: Iterable[float], start: float) -> list[tuple[str, float]]:
    """(strategy, ratio) pairs ordered by how many slider steps the ratio is from ``start``
    (ties: the smaller ratio first), every strategy at each distance."""
    ratios, strategies = list(ratios), list(strategies)
    i0 = min(range(len(ratios)), key=lambda i: abs(ratios[i] - start))
    order = sorted(range(len(ratios)), key=lambda i: (abs(i - i0), i))
    return [(s, ratios[i]) for i in order for s in strategies]


class Warmer:
    """Answers ``questions`` ((strategy, ratio) pairs) with ``lab.score(strategy, ratio,
    **question)`` on a daemon thread, then ``then(answer)`` (the page: its figures); a question
    the data cannot answer is skipped."""

    def __init__(self, lab, questions: list[tuple[str, float]], *, then: Callable | None = None, **question):
        self.lab = lab
        self.questions = list(questions)
        self.then = then
        self.question = question
        self.done = 0
        self.skipped = 0
        self.elapsed_s = 0.0
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dala-lab-warm", daemon=True)

    def start(self) -> "Warmer":
        _LIVE.add(self)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the question being answered (a fit: milliseconds to a second)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        t0 = time.perf_counter()
        try:
            for strategy, ratio in self.questions:
                if self._stop.is_set():
                    return
                try:
                    res = self.lab.score(strategy, ratio, **self.question)
                    if self.then is not None:
                        self.then(res)
                except DalaError:  # e.g. a ratio leaving no benign image on a small dataset
                    self.skipped += 1
                self.done += 1
                # let a student's rerun (waiting on the GIL) go first between two answers
                time.sleep(0.001)
        finally:
            self.elapsed_s = time.perf_counter() - t0
            self.finished.set()


@atexit.register
def _stop_all() -> None:  # no fit left running while the interpreter tears torch down
    for warmer in list(_LIVE):
        warmer.stop(timeout=2.0)
