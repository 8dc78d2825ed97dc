"""`colrag serve`: keep the models loaded, so that `colrag ask` answers without loading them.

Loading the two bundles takes seconds to tens of seconds (full-size int8: ~12 s on 2 cores,
docs/BENCHMARKS.md); a question on an indexed page needs only ~10 s of compute once page
features come from the index. `colrag serve` loads the retriever and the generator once
and answers on a Unix socket, `$COLRAG_HOME/run/serve.sock` (mode 0600 in a 0700 folder:
only its user can connect). `colrag ask` looks for it and, when it is running with the
same bundles, sends it the question and prints the answer as it streams; otherwise (no
server, other bundles, --show, --interactive, --no-cache) it loads the models itself, as
before. One question at a time; a second client waits its turn.

Protocol (one request per connection, JSON lines, UTF-8):
    client -> {"version": 1, "question", "pages", "images", "index", "retriever", "generator",
               "page_features", "max_pixels", "password", "options": {...GenerationOptions}}
    server -> {"note": "..."}*, {"piece": "..."}*  then  {"answer": {...}}  or  {"error": "...", "exit_code": n}
              or, before anything else, {"mismatch": "why"} (the client then answers locally)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ColragError

PROTOCOL = 1
CONNECT_TIMEOUT_S = 0.5
MAX_REQUEST_BYTES = 1 << 20


def socket_path() -> Path:
    from .paths import colrag_home

    return colrag_home() / "run" / "serve.sock"


def _identity(
    retriever: Path, generator: Path, threads: int | None, backend: str | None = None, precision: str | None = None
) -> dict[str, Any]:
    """What must be the same for the server's answer to be the one `ask` would compute itself."""
    return {
        "retriever": str(Path(retriever).resolve()),
        "generator": str(Path(generator).resolve()),
        "threads": threads,
        "backend": (backend or os.environ.get("COLRAG_BACKEND") or "auto").lower(),
        "precision": (precision or os.environ.get("COLRAG_PRECISION") or "auto").lower(),
    }


# -- server -----------------------------------------------------------------------------------
def serve(asker, retriever: Path, generator: Path, threads: int | None, log=print, stop=None) -> None:
    """Answer requests on the socket until SIGINT/SIGTERM (or `stop`, a threading.Event, is set).
    `asker` should be resident (keep_retriever=True)."""
    path = socket_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ColragError(f"{path} exists and is not a socket; move it away")
        if _connect(path) is not None:
            raise ColragError(f"colrag serve is already running on {path}")
        path.unlink()  # a server that died without cleaning up
    identity = _identity(retriever, generator, threads, asker.backend, asker.precision)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        server.bind(str(path))
    finally:
        os.umask(old_umask)
    server.listen(8)
    inode = path.stat().st_ino

    def interrupt(*_):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    if stop is not None:
        server.settimeout(0.2)
    log(f"colrag serve: ready on {path} (pid {os.getpid()}); Ctrl-C stops it")
    try:
        while stop is None or not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            with conn:
                _handle(conn, asker, identity, log)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        with contextlib.suppress(OSError):
            if path.stat().st_ino == inode:  # ours, not a newer server's
                path.unlink()


def _handle(conn: socket.socket, asker, identity: dict[str, Any], log) -> None:
    from .ask import Answer

    out = conn.makefile("w", encoding="utf-8")

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()

    try:
        line = conn.makefile("rb").readline(MAX_REQUEST_BYTES)
        request = json.loads(line.decode("utf-8"))
        if not isinstance(request, dict) or request.get("version") != PROTOCOL:
            send({"mismatch": "another protocol version"})
            return
        mine = {k: request.get(k) for k in identity}
        if mine != identity:
            send({"mismatch": "the server runs other bundles or threads"})
            return
        asker.index_path = Path(request["index"])
        asker.page_features = bool(request.get("page_features", True))
        asker.max_pixels = request.get("max_pixels")
        asker.password = request.get("password")
        prepared = asker.prepare(request["question"], pages=int(request.get("pages", 1)), images=request.get("images"))
        for note in prepared.notes:
            send({"note": note})
        answer = Answer()
        for piece in asker.stream(request["question"], prepared, answer, **(request.get("options") or {})):
            send({"piece": piece})
        send({"answer": answer.as_dict()})
        log(f"answered in {answer.timings.first_token_s + answer.timings.decode_s:.2f}s: {request['question'][:60]!r}")
    except ColragError as exc:
        with contextlib.suppress(OSError):
            send({"error": str(exc), "exit_code": exc.exit_code})
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a client that went away or sent nonsense
        with contextlib.suppress(OSError):
            send({"error": f"bad request: {exc}", "exit_code": 2})


# -- client -----------------------------------------------------------------------------------
def _connect(path: Path) -> socket.socket | None:
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    sock.settimeout(None)
    return sock


def ask_server(
    request: dict[str, Any],
    retriever: Path,
    generator: Path,
    threads: int | None,
    backend: str | None = None,
    precision: str | None = None,
) -> Iterator[dict[str, Any]] | None:
    """Events from a running server ({"piece"} ..., then {"answer"}), or None when there is none to use."""
    sock = _connect(socket_path())
    if sock is None:
        return None
    try:
        payload = {"version": PROTOCOL, **_identity(retriever, generator, threads, backend, precision), **request}
        sock.sendall((json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8"))
        reader = sock.makefile("r", encoding="utf-8")
        first = reader.readline()
    except OSError:
        sock.close()
        return None
    if not first:
        sock.close()
        return None
    event = json.loads(first)
    if "mismatch" in event:
        sock.close()
        print(f"note: colrag serve is running but not used ({event['mismatch']})", file=sys.stderr)
        return None
    return _events(sock, reader, event)


def _events(sock: socket.socket, reader, first: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with sock:
        event = first
        while True:
            if "error" in event:
                err = ColragError(event["error"])
                err.exit_code = int(event.get("exit_code", 1))
                raise err
            yield event
            if "answer" in event:
                return
            line = reader.readline()
            if not line:
                raise ColragError("colrag serve stopped while answering; run the question again")
            event = json.loads(line)
