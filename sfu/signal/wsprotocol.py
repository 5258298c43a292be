"""The WebSocket server protocol under `/rtc`: uvicorn's wsproto protocol, taking its turn.

uvicorn parses every frame of a received chunk in one callback. A chunk is up to 256 KiB, so a
client that sends thousands of tiny frames at once (a subscribe/unsubscribe storm) held the
event loop — everyone's media and signalling — for over 100 ms per chunk. `FairWSProtocol`
handles at most `EVENTS_PER_TURN` WebSocket events per callback; the rest of the chunk waits in
wsproto's buffer for the next loop iteration, with reading paused so that the buffer cannot grow
meanwhile (uvicorn resumes reading once the application has taken every queued message).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import events

__all__ = ["EVENTS_PER_TURN", "FairWSProtocol"]

EVENTS_PER_TURN = 64


class FairWSProtocol(WSProtocol):
    def handle_events(self) -> None:
        for handled, event in enumerate(
            self.conn.events(), 1
        ):  # parsed lazily: the rest stays buffered
            if self.close_sent:
                if isinstance(event, events.CloseConnection):
                    self.handle_close(event)
            elif isinstance(event, events.Request):
                self.handle_connect(event)
            elif isinstance(event, events.TextMessage | events.BytesMessage):
                self.handle_message(event)
            elif isinstance(event, events.CloseConnection):
                self.handle_close(event)
            elif isinstance(event, events.Ping):
                self.handle_ping(event)
            elif isinstance(event, events.Pong):
                self.handle_pong(event)
            if handled >= EVENTS_PER_TURN:
                if not self.read_paused:
                    self.read_paused = True
                    self.transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._next_turn)
                return

    def _next_turn(self) -> None:
        if not self.transport.is_closing():
            self.handle_events()
