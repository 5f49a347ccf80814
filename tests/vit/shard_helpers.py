"""What the shard tests share: an image folder of real JPEG and PNG files, packed shards of it, and a real HTTP
server (Python's http.server in a thread) that serves a directory with byte ranges, as nginx or S3 do."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from vit.data.shard_pack import pack

CLASSES = ("ant", "bee", "cow", "dog")


def write_photos(folder: Path, per_class: int, *, seed: int = 0, size: int = 20) -> None:
    """folder/<class>/<i>.jpg|png: noisy images around a class colour, odd ones JPEG, even ones PNG, sizes vary."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        colour = np.array([60 * label, 255 - 60 * label, 128])
        for i in range(per_class):
            noise = rng.normal(0, 30, (size + i % 3, size + 2 * (i % 2), 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            suffix = "jpg" if i % 2 else "png"
            Image.fromarray(pixels).save(folder / name / f"{i}.{suffix}")


def packed_folder(tmp_path: Path, *, train: int = 6, val: int = 2, shard_bytes: int = 16384) -> Path:
    """tmp_path/src/{train,val}/<class>/ packed into tmp_path/shards (several shards per split)."""
    write_photos(tmp_path / "src" / "train", train)
    if val:
        write_photos(tmp_path / "src" / "val", val, seed=1)
    pack(str(tmp_path / "src"), tmp_path / "shards", shard_bytes=shard_bytes)
    return tmp_path / "shards"


class RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler answers every GET with the whole file; real file servers honour Range."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the reader expects of a real server
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if wanted is None:
            self.send_response(200)
            body = data
        else:
            start, end = int(wanted.group(1)), int(wanted.group(2))
            if start >= len(data):
                self.send_error(416)
                return
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server(directory: Path, *, ranges: bool = True) -> Iterator[str]:
    """Serve directory on 127.0.0.1 from a thread; yields its base URL."""
    handler = RangeHandler if ranges else QuietHandler
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(directory)))
    # A reader's kept-alive connection ends with the reader: closing the server does not wait for it.
    server.daemon_threads, server.block_on_close = True, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
