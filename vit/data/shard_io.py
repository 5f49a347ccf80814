"""Byte ranges of the files under a shard root: a local (or shared-filesystem) directory, or an HTTP(S) base URL.

Training reads one tar member at a time by (offset, size), so a file is opened once per process and read with
pread, and a URL is read with Range requests over one kept-alive connection per process. Open files and
connections belong to the process that made them: a forked loader worker opens its own.

A local file is checked to resolve inside the allowed data roots (vit.data_roots) each time it is opened: the
index at start, each shard when its size is checked at start and when a process opens it, each member table when
it is first read. No directory is listed.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlsplit

from vit.config import SHARD_URL_SCHEMES
from vit.data.errors import DataError
from vit.data_roots import check_link, check_root

# Open shard files kept per process: the sampler's shuffle window touches a few shards at a time, so this many
# covers it with room to spare while staying far below the usual 1,024-descriptor limit.
MAX_OPEN_FILES = 64
HTTP_TIMEOUT_S = 60.0


class Location(Protocol):
    def describe(self, name: str) -> str:
        """Where `name` lives, for messages: a path or a URL."""
        ...

    def read(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        """`size` bytes of `name` from `offset` (None: to the end); fewer only where the file ends first."""
        ...

    def size(self, name: str) -> int | None:
        """The file's size when a stat costs nothing (a local file), else None."""
        ...

    def stream(self, name: str) -> BinaryIO:
        """The whole file to read from its start (seekable when it is local)."""
        ...


def open_location(root: str) -> Location:
    if root.startswith(SHARD_URL_SCHEMES):
        return HttpLocation(root)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root {path} is not a directory (or does not exist)")
    return LocalLocation(path, check_root(path))


class LocalLocation:
    def __init__(self, root: Path, roots: list[Path] | None = None) -> None:
        self.root = root
        self.roots = roots  # the allowed data roots; None: not confined
        self._pid = -1
        self._files: OrderedDict[str, int] = OrderedDict()

    def __getstate__(self) -> dict[str, object]:
        return {"root": self.root, "roots": self.roots, "_pid": -1, "_files": OrderedDict()}

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def path(self, name: str) -> Path:
        """The file `name`, refused (DataError) when it resolves outside the allowed data roots."""
        path = self.root / name
        check_link(path, self.roots)
        return path

    def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            raise DataError(f"shard file {self.root / name} is missing") from None

    def stream(self, name: str) -> BinaryIO:
        try:
            return open(self.path(name), "rb")
        except FileNotFoundError:
            raise DataError(f"shard file {self.root / name} is missing") from None

    def read(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        if size is None:
            try:
                with open(self.path(name), "rb") as file:
                    file.seek(offset)
                    return file.read()
            except FileNotFoundError:
                raise DataError(f"file {self.root / name} is missing") from None
        return os.pread(self._fd(name), size, offset)

    def _fd(self, name: str) -> int:
        if self._pid != os.getpid():  # inherited from the parent: its descriptors' offsets are shared, reopen
            self._files = OrderedDict()
            self._pid = os.getpid()
        fd = self._files.get(name)
        if fd is None:
            try:
                fd = os.open(self.path(name), os.O_RDONLY)
            except FileNotFoundError:
                raise DataError(f"shard file {self.root / name} is missing") from None
            self._files[name] = fd
            if len(self._files) > MAX_OPEN_FILES:
                os.close(self._files.popitem(last=False)[1])
        self._files.move_to_end(name)
        return fd


class HttpLocation:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/") + "/"
        parts = urlsplit(self.base)
        self._https = parts.scheme == "https"
        self._host = parts.netloc
        self._path = parts.path
        self._pid = -1
        self._connection: http.client.HTTPConnection | None = None

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_pid": -1, "_connection": None}

    def describe(self, name: str) -> str:
        return self.base + name

    def size(self, name: str) -> int | None:
        return None

    def stream(self, name: str) -> BinaryIO:
        url = self.describe(name)
        try:
            response: BinaryIO = urllib.request.urlopen(self.base + quote(name), timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            raise DataError(f"cannot read {url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            raise DataError(f"cannot read {url}: {getattr(err, 'reason', err)}") from None
        return response

    def read(self, name: str, offset: int = 0, size: int | None = None) -> bytes:
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"} if size is not None else {}
        url = self.describe(name)
        for attempt in (1, 2):
            connection = self._connected()
            try:
                connection.request("GET", self._path + quote(name), headers=headers)
                response = connection.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, OSError) as err:
                # A kept-alive connection the server has closed since: one fresh connection, then give up.
                connection.close()
                self._connection = None
                if attempt == 2:
                    raise DataError(f"cannot read {url}: {err}") from err
        if response.status == 404:
            raise DataError(f"{url} not found (HTTP 404)")
        if response.status == 416:  # the range starts past the end: the file is shorter than the index says
            return b""
        if size is not None and response.status == 200:
            raise DataError(
                f"{url}: the server ignored a byte-range request; shards over HTTP need a server that serves "
                "ranges (nginx, Apache, S3, GCS and most object stores do)"
            )
        if response.status not in (200, 206):
            raise DataError(f"cannot read {url}: HTTP {response.status} {response.reason}")
        return body

    def _connected(self) -> http.client.HTTPConnection:
        if self._pid != os.getpid() or self._connection is None:
            connection_type = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = connection_type(self._host, timeout=HTTP_TIMEOUT_S)
            self._pid = os.getpid()
        return self._connection
