"""A FastAPI app served by uvicorn in a daemon thread, for the tests of the HTTP API."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI


class ServerThread:
    """``app`` served by uvicorn in a daemon thread on ``host:port`` (0: a free port), for tests.

    Attributes:
        server_address: the bound (host, port).
        url: ``http://host:port``.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.socket = socket.create_server((host, port))
        self.server_address = self.socket.getsockname()[:2]
        self.url = f"http://{self.server_address[0]}:{self.server_address[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def start(self, timeout: float = 30) -> ServerThread:
        """Start serving; return once uvicorn accepts connections."""
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Stop serving (the app's lifespan stops the batcher)."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
