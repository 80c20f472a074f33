"""The base of the selectors that let an asyncio loop wait through the native bridge (the
``"busy-poll"`` and ``"loop-thread"`` loops of :mod:`iroh_pair.runtime`)."""

from __future__ import annotations

import asyncio
import selectors
import weakref
from collections.abc import Mapping
from typing import Any

from iroh_pair.runtime import _bridge

class BridgeSelector(selectors.BaseSelector):
    """Wraps another selector (``selectors.DefaultSelector()`` unless given): registrations go
    to it unchanged; subclasses decide how ``select`` waits. ``loop`` is set by the function that
    makes the loop, so the selector can find that loop's bridge."""

    def __init__(self, inner: selectors.BaseSelector | None = None) -> None:
        self.inner = inner if inner is not None else selectors.DefaultSelector()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._bridge_found: _bridge.Bridge | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self.inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self.inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self.inner.get_map()

    def close(self) -> None:
        self.inner.close()

    def _bridge(self) -> _bridge.Bridge | None:
        """The loop's bridge, once an operation has created it (none: no native operation yet)."""
        if self._bridge_found is None and self.loop is not None:
            self._bridge_found = _bridge.bridge_of(self.loop)
        return self._bridge_found


_selectors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BridgeSelector] = weakref.WeakKeyDictionary()


def make_loop(selector: BridgeSelector) -> asyncio.AbstractEventLoop:
    """A selector event loop on ``selector``, which :func:`selector_of` can then look up."""
    loop = asyncio.SelectorEventLoop(selector)
    selector.loop = loop
    _selectors[loop] = selector
    return loop


def selector_of(loop: asyncio.AbstractEventLoop | None) -> BridgeSelector | None:
    """The selector of ``loop`` (default: the running loop) when :func:`make_loop` made it,
    else None."""
    return _selectors.get(loop if loop is not None else asyncio.get_running_loop())
