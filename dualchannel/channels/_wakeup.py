"""A resettable wake-up signal for one waiting task (anyio)."""

from __future__ import annotations

import math

import anyio

__all__ = ["Wakeup"]


class Wakeup:
    """``set()`` wakes the task blocked in :meth:`wait`; the signal then resets itself."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, within: float = math.inf) -> bool:
        """Wait up to ``within`` seconds; True (and reset) if set meanwhile or before."""
        with anyio.move_on_after(within):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()
            return True
        return False
