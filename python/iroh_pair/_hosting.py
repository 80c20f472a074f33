"""One hosted pairing code's state, together: the offer, its waiter, its SAS confirmation and
its LAN announcement (:class:`Hosted`). :class:`~iroh_pair.Node` keeps one per live code, by
the offer's tag, and ends it once (used, burned, expired, declined or the node closing)::

    hosted = Hosted(offer, loop.create_future(), confirm, announcement)
    ...
    hosted.end(device)   # or an exception: hosted.wait() raises it
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from iroh_pair._native import MdnsAnnouncement
from iroh_pair._pairing import ConfirmSas
from iroh_pair.protocol.offer import PairingOffer
from iroh_pair.store import PairedDevice

__all__ = ["Hosted"]


@dataclass(slots=True)
class Hosted:
    """A hosted code: ``offer`` (attempts, deadlines), ``waiter`` (what ``hosted.wait()``
    awaits), ``confirm`` (the SAS question, if any) and ``announcement`` (the nameplate on the
    LAN, for a ``lan=True`` code)."""

    offer: PairingOffer
    waiter: asyncio.Future[PairedDevice]
    confirm: ConfirmSas | None = None
    announcement: MdnsAnnouncement | None = None

    @property
    def live(self) -> bool:
        """Whether nobody has settled the waiter yet."""
        return not self.waiter.done()

    def stop_announcing(self) -> None:
        """Ends the LAN announcement (idempotent)."""
        if self.announcement is not None:
            self.announcement.close()
            self.announcement = None

    def end(self, outcome: PairedDevice | BaseException) -> None:
        """Stops announcing and settles the waiter with ``outcome`` (once; later calls only
        stop announcing). An exception is marked retrieved: a code nobody waits on is not an
        error."""
        self.stop_announcing()
        if self.waiter.done():
            return
        if isinstance(outcome, PairedDevice):
            self.waiter.set_result(outcome)
        else:
            self.waiter.set_exception(outcome)
            self.waiter.exception()
