"""A paired device in a process of its own, for tests/test_outbox.py: a receiver, a sender, or
both.

Usage: ``python outbox_peer.py CONFIG_JSON``; the config holds ``data_dir``, ``name``, the
local servers (``relays``, ``pkarr_url``, ``dns_origin``, ``dns_server``), ``idle_timeout``,
``keep_alive``, ``dial_timeout``, ``retry_max`` (``Node.open``'s ``outbox_retry_max``) and:

- ``log``: a file the "msg" handler appends each payload to, one line each (written with
  ``os.write`` before the handler returns: what a SIGKILL leaves there was handled);
- ``handler_delay``: seconds the handler sleeps before writing (slows delivery down);
- ``hang_on``: a payload whose handler prints ``{"in_handler": payload}`` and never returns
  (the test kills the process there: the message is not delivered);
- ``kill_after_commit``: a payload after whose handler, once its message id is committed as
  delivered (PROTOCOL.md §13.8) and before the reply is sent, the process SIGKILLs itself;
- ``target`` and ``enqueue``: a paired device and payloads to queue for it at start
  (``Node.enqueue``); ``{"outbox_empty": time}`` is printed once its outbox is empty.

It prints ``{"ready": time}`` once its record is on the lookup server, then runs until
killed; on SIGTERM it closes the node and prints ``{"closed": time, "rejections": {...}}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from iroh_pair import Node, PairedDevice
from iroh_pair.transport import LookupConfig, NetworkOptions, RelayConfig


def say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


async def main() -> None:
    cfg = json.loads(sys.argv[1])
    options = NetworkOptions.self_hosted(
        [RelayConfig.parse(r) for r in cfg["relays"]],
        LookupConfig(pkarr_url=cfg["pkarr_url"], dns_origin=cfg["dns_origin"], dns_server=cfg["dns_server"]),
        bind_addrs=("127.0.0.1:0",),
    ).replace(idle_timeout=cfg["idle_timeout"], keep_alive=cfg["keep_alive"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    node = await Node.open(cfg["data_dir"], name=cfg["name"], options=options,
                           dial_timeout=cfg["dial_timeout"], outbox_retry_max=cfg["retry_max"])
    log_fd = os.open(cfg["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if cfg.get("log") else -1
    delay = float(cfg.get("handler_delay", 0))
    kill_next = [False]

    async def handler(dev: PairedDevice, data: bytes) -> bytes:
        text = data.decode()
        if delay:
            await asyncio.sleep(delay)
        if text == cfg.get("hang_on"):
            say(in_handler=text)
            await asyncio.Event().wait()  # never returns: killed here
        os.write(log_fd, data + b"\n")
        if text == cfg.get("kill_after_commit"):
            kill_next[0] = True
        return b"ok"

    if log_fd >= 0:
        node.on_message(handler)
        record = node.registry.record_delivered

        def record_then_maybe_die(endpoint_id: Any, message_id: bytes, when: float | None = None) -> bool:
            done = record(endpoint_id, message_id, when)
            if kill_next[0]:  # committed; the reply is not sent yet
                os.kill(os.getpid(), signal.SIGKILL)
            return done

        node.registry.record_delivered = record_then_maybe_die  # type: ignore[method-assign]
    await node.wait_reachable()
    say(ready=time.time())
    if cfg.get("target"):
        for payload in cfg.get("enqueue", []):
            node.enqueue(cfg["target"], payload.encode())
        say(enqueued=len(cfg.get("enqueue", [])))

        async def watch_outbox() -> None:
            while node.outbox():
                await asyncio.sleep(0.05)
            say(outbox_empty=time.time())

        watcher = asyncio.ensure_future(watch_outbox())
    await stop.wait()
    rejections = dict(node.rejections)
    await node.close()
    say(closed=time.time(), rejections=rejections)


asyncio.run(main())
