"""A one-shot barrier for tasks of one event loop (``asyncio.Barrier`` is 3.11+)."""

from __future__ import annotations

import asyncio


class Rendezvous:
    """``await r.wait()`` returns once ``parties`` tasks have called it."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self._all_here = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self._all_here.set()
        await self._all_here.wait()
