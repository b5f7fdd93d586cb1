"""A file server on 127.0.0.1 for tests of downloads (the only network tests may use): it serves one
folder, logs nothing, and stops when the test ends."""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output (and capsys) free of access lines
        pass


@contextmanager
def local_file_server(www: Path) -> Iterator[str]:
    """Serve ``www`` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    www.mkdir(parents=True, exist_ok=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    httpd.timeout = 10
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
