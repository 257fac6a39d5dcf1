"""The ASGI lifespan protocol, answered: the gateway's state is made before the server starts
(in its trio nursery), so there is nothing to do at startup or shutdown."""

from __future__ import annotations

from starlette.types import Receive, Send


async def serve_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
