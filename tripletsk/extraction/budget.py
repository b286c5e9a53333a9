"""A shared byte budget: decoding threads hold the bytes their decoded pixels need.

Decoding a 9400x9400 image takes hundreds of megabytes; eight threads each decoding one at the
same time would take gigabytes. Each decoder first reads the image's header (cheap: size and
mode), estimates the bytes it will hold, and waits until the budget has room. Requests are served
in arrival order (a large one is not starved by small ones), and a request larger than the whole
budget takes all of it, so such an image decodes alone and never deadlocks.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque

__all__ = ["ByteBudget"]


class ByteBudget:
    """At most ``limit`` bytes held at once by :meth:`hold`; ``peak`` is the most ever held."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._queue: deque = deque()

    @contextlib.contextmanager
    def hold(self, n: int):
        """Hold ``n`` bytes (at most the whole budget) for the duration of the ``with`` block."""
        n = max(0, min(int(n), self.limit))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                self._cond.wait_for(
                    lambda: self._queue[0] is ticket and self.in_use + n <= self.limit
                )
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= n
                self._cond.notify_all()
