"""A display that shows the newest state of something at most once per interval.

The streamed answer (bot.channels.streaming) and an analysis's progress (bot.channels.progress)
both show what changes faster than a chat platform lets a bot edit: the newest state is shown
at once when there is something new, then at most once per `interval`, by one background task,
so whoever reports a change never waits for the platform and a burst of changes costs one call.
Stopping never cancels a call in flight: a message sent but not known would stay behind.
"""

from __future__ import annotations

import asyncio
import contextlib


class PacedDisplay:
    """The background task and its pacing. A subclass keeps the state, calls `_poke` when it
    changed and `_halt` at the end, and says in `_update` how to show the newest state."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dead = False  # a failure ended the display for good

    @property
    def live(self) -> bool:
        """Still showing changes (False once halted, or ended by a failure)."""
        return not self._dead and not self._stop.is_set()

    def _poke(self) -> None:
        """Something new to show: now, or once the interval since the last call is over."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        self._wake.set()

    def _halt(self) -> None:
        """No more updates: the task ends after a call in flight (await `_task` for it)."""
        self._stop.set()
        self._wake.set()

    async def _rest(self, seconds: float) -> bool:
        """Wait `seconds`, cut short by `_halt`; False once halted."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return not self._stop.is_set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.live:
                return
            if not await self._update():
                self._dead = True
                return
            if not await self._rest(self.interval):
                return

    async def _update(self) -> bool:
        """Show the newest state if it is not on display already; False ends the display."""
        raise NotImplementedError
