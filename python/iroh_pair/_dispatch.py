"""Delivery of one message stream from a paired device to its handler (:class:`Messages`).

:class:`~iroh_pair.Node` routes each incoming stream by its envelope kind; a message kind's
stream comes here: the handler registered for the kind gets the decrypted bytes, its message
id is checked and committed exactly once (docs/PROTOCOL.md §13.8), and what the handler
returns goes back sealed as the reply. Refusals reset the stream with their
:class:`~iroh_pair.protocol.constants.StreamErrorCode` and are counted. Example::

    messages = Messages(deliveries, counters, rejections, spawn)
    messages.handlers["msg"] = lambda dev, data: b"got " + data
    messages.deliver(incoming, dev, "msg", body, lambda: channel)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Union

from iroh_pair.errors import IrohPairError, MessageRejected
from iroh_pair.protocol.constants import StreamErrorCode
from iroh_pair.protocol.messaging import Deliveries, MessageChannel
from iroh_pair.store import PairedDevice
from iroh_pair.transport import EndpointId, IncomingStream

__all__ = ["MessageHandler", "Messages", "reject", "code_name"]

log = logging.getLogger("iroh_pair.node")

#: A handler of one stream kind: the sending device and the decrypted bytes in, the reply
#: (``None``: empty) out, directly or as an awaitable.
MessageHandler = Callable[[PairedDevice, bytes], Union[bytes, None, Awaitable[Union[bytes, None]]]]


def code_name(code: int) -> str:
    """The name of a stream error code (``"DUPLICATE"``), or ``"code N"``."""
    try:
        return StreamErrorCode(code).name
    except ValueError:
        return f"code {code}"


def reject(incoming: IncomingStream, code: int) -> None:
    """Resets ``incoming`` with ``code`` (a stream already gone is fine)."""
    try:
        incoming.reject(code)
    except IrohPairError:
        pass


class Messages:
    """The message handlers by kind and their exactly-once delivery.

    ``deliveries`` tracks message ids per peer; ``counters`` (``messages_delivered``,
    ``messages_rejected``) and ``rejections`` (by code name) are the node's, updated in place;
    ``spawn`` runs an async handler's completion as a task of the node.
    """

    def __init__(
        self,
        deliveries: Deliveries[EndpointId],
        counters: dict[str, int],
        rejections: dict[str, int],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.handlers: dict[str, MessageHandler] = {}
        self._deliveries = deliveries
        self._counters = counters
        self._rejections = rejections
        self._spawn = spawn

    def deliver(
        self,
        incoming: IncomingStream,
        dev: PairedDevice,
        kind: str,
        body: bytes,
        channel_of: Callable[[], MessageChannel],
        handler: MessageHandler | None = None,
    ) -> None:
        """Hands the message in ``body`` (after the envelope header) to ``kind``'s handler (or
        to ``handler``) and replies, or rejects the stream. ``channel_of`` gives the
        connection's channel to ``dev`` (made only when a handler exists)."""
        if handler is None:
            handler = self.handlers.get(kind)
        if handler is None:
            reject(incoming, StreamErrorCode.UNKNOWN_KIND)
            return
        channel = channel_of()
        try:
            msg = channel.open(kind, body)
            verdict = self._deliveries.begin(dev.endpoint_id, msg.message_id)
        except MessageRejected as e:
            self._count_rejected(dev, e.code, logging.WARNING)
            reject(incoming, int(e.code))
            return
        except IrohPairError:  # the registry failed: not delivered, the sender may retry
            log.exception("cannot look up a message id from %s", dev.endpoint_id.fmt_short())
            reject(incoming, StreamErrorCode.HANDLER_ERROR)
            return
        if verdict is not None:  # DUPLICATE or IN_PROGRESS: a retry, not an attack
            self._count_rejected(dev, verdict, logging.INFO)
            reject(incoming, int(verdict))
            return
        self._counters["messages_delivered"] += 1
        peer, mid = dev.endpoint_id, msg.message_id
        deliveries = self._deliveries

        def reply(out: bytes | None) -> None:
            # §13.8: the id is committed when the handler has returned, before the reply.
            try:
                deliveries.commit(peer, mid)
            except IrohPairError:
                log.error("could not record message %s from %s as delivered: a retry would be "
                          "delivered again", mid.hex(), peer.fmt_short(), exc_info=True)
            try:
                incoming.respond(b"" if out is None else channel.seal(kind, out, reply_to=mid))
            except IrohPairError:
                log.debug("could not send a reply", exc_info=True)

        def failed() -> None:
            log.exception("message handler for %r failed", kind)
            deliveries.abort(peer, mid)  # nothing recorded: a retry will be delivered
            reject(incoming, StreamErrorCode.HANDLER_ERROR)

        try:
            out = handler(dev, msg.plaintext)
        except Exception:
            failed()
            return
        except BaseException:  # KeyboardInterrupt/SystemExit in a handler: not delivered
            deliveries.abort(peer, mid)
            reject(incoming, StreamErrorCode.HANDLER_ERROR)
            raise
        if inspect.isawaitable(out):
            aw = out

            async def finish() -> None:
                try:
                    r = await aw
                except Exception:
                    failed()
                    return
                except BaseException:  # cancelled (the node closes): not delivered
                    deliveries.abort(peer, mid)
                    raise
                reply(r)

            self._spawn(finish())
        else:
            reply(out)

    def _count_rejected(self, dev: PairedDevice, code: int, level: int) -> None:
        self._counters["messages_rejected"] += 1
        name = code_name(code)
        self._rejections[name] = self._rejections.get(name, 0) + 1
        log.log(level, "refused a message from %s: %s", dev.endpoint_id.fmt_short(), name)
