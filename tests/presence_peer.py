"""A paired device in a process of its own, for tests/test_presence.py.

Usage: ``python presence_peer.py CONFIG_JSON``; the config holds ``data_dir``, ``name``, the
local servers (``relays``, ``pkarr_url``, ``dns_origin``, ``dns_server``), ``idle_timeout``,
``keep_alive`` and ``target`` (the paired device to reach). It opens the node in the data
directory, dials ``target`` by id (through the lookup server), sends one message, prints one
JSON line with wall-clock times (``dial_start``, ``connected``: the dial returned, ``replied``:
the reply arrived) and then stays connected until killed; on SIGTERM it closes the node (a
graceful close) and prints ``{"closed": <time>}``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from iroh_pair import ConnectError, Node, Timeout
from iroh_pair.protocol.constants import ALPN
from iroh_pair.transport import LookupConfig, NetworkOptions, RelayConfig


async def main() -> None:
    cfg = json.loads(sys.argv[1])
    options = NetworkOptions.self_hosted(
        [RelayConfig.parse(r) for r in cfg["relays"]],
        LookupConfig(pkarr_url=cfg["pkarr_url"], dns_origin=cfg["dns_origin"], dns_server=cfg["dns_server"]),
        bind_addrs=("127.0.0.1:0",),
    ).replace(idle_timeout=cfg["idle_timeout"], keep_alive=cfg["keep_alive"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    node = await Node.open(cfg["data_dir"], name=cfg["name"], options=options)
    target = node.device(cfg["target"])
    for attempt in range(10):  # the target waited until its record was on the lookup server
        dial_start = time.time()
        try:
            await node.cache.get(target.endpoint_id, ALPN)  # dialed by id alone
            break
        except (ConnectError, Timeout) as e:
            print(f"dial {attempt} failed: {e}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.5)
    connected = time.time()
    reply = await node.request(target, b"hello from " + cfg["name"].encode(), timeout=10)
    print(json.dumps({"dial_start": dial_start, "connected": connected, "replied": time.time(),
                      "reply": reply.decode()}), flush=True)
    await stop.wait()
    await node.close()
    print(json.dumps({"closed": time.time()}), flush=True)


asyncio.run(main())
