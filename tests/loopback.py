"""HTTP servers on free 127.0.0.1 ports for tests: the local Hub and the scripted chat servers share them."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


class LoopbackServer:
    """`handler` serving on a free loopback port, in a thread, until `close()`; `attributes` are set on the
    underlying server, where the handler reads them as `self.server.<name>`."""

    def __init__(self, handler, **attributes):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        for name, value in attributes.items():
            setattr(self.server, name, value)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
