"""A local stand-in for the Hugging Face Hub, enough for `huggingface_hub.snapshot_download`.

Serves folders as model repositories on 127.0.0.1 (a random port), one commit each.
huggingface_hub 2.4 calls, in order:

    GET  /api/models/{repo}/revision/{rev}           repo info: {"id", "sha", "siblings": [{"rfilename"}]}
    GET  /api/models/{repo}/tree/{sha}?recursive=..  file listing: [{"type": "file", "path", "size", "oid", "lfs"?}]
    HEAD /{repo}/resolve/{sha}/{path}                 metadata: X-Repo-Commit, ETag (git blob id) or, for LFS
                                                     files, X-Linked-Etag (sha256) + X-Linked-Size; Content-Length
    GET  /{repo}/resolve/{sha}/{path}                 the bytes; `Range: bytes=N-` answered with 206 (resume)

Unknown repos and revisions get 404 with the Hub's X-Error-Code (RepoNotFound,
RevisionNotFound, EntryNotFound), which huggingface_hub turns into its own errors.
No xet headers are sent, so downloads take the plain HTTP path.

Test hooks: `requests` records (method, path, Range header); `drop_after[path] = n`
makes the first full GET of `path` close the connection after n bytes (a dropped
download, which huggingface_hub resumes with a Range request).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".npy", ".data")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Repo:
    def __init__(self, repo_id: str, files: dict[str, bytes]):
        self.repo_id = repo_id
        self.files = files
        listing = "".join(f"{p}:{git_blob_id(d)}\n" for p, d in sorted(files.items()))
        self.sha = hashlib.sha1(listing.encode()).hexdigest()  # a 40-hex "commit"
        self.sha256 = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def tree(self) -> list[dict]:
        rows = []
        for path, data in sorted(self.files.items()):
            row = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if self.is_lfs(path):
                row["lfs"] = {"oid": self.sha256[path], "size": len(data), "pointerSize": 134}
            rows.append(row)
        return rows


class HubServer:
    """`with HubServer({"org/name": folder}) as hub:` then set HF_ENDPOINT=hub.url."""

    def __init__(self, repos: dict[str, Path | dict[str, bytes]], branches: tuple[str, ...] = ("main",)):
        self.repos: dict[str, _Repo] = {}
        for repo_id, src in repos.items():
            if isinstance(src, dict):
                files = dict(src)
            else:
                root = Path(src)
                files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
            self.repos[repo_id] = _Repo(repo_id, files)
        self.branches = branches
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: dict[str, int] = {}
        self._dropped: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def downloaded(self, repo_id: str) -> set[str]:
        """Paths of `repo_id` fetched with GET."""
        prefix = f"/{repo_id}/resolve/"
        return {
            path[len(prefix) :].split("/", 1)[1]
            for m, path, _ in self.requests
            if m == "GET" and path.startswith(prefix)
        }

    # -- routing ----------------------------------------------------------------------
    def resolve_revision(self, repo: _Repo, rev: str) -> bool:
        return rev in self.branches or rev == repo.sha

    def find_repo(self, path: str) -> tuple[_Repo | None, str]:
        """The repo whose id starts `path` and the rest of the path."""
        for repo_id, repo in self.repos.items():
            if path == repo_id or path.startswith(repo_id + "/"):
                return repo, path[len(repo_id) + 1 :]
        return None, path


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    # -- helpers --------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head: bool = False
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str, message: str, *, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
            head=head,
        )

    # -- verbs ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _route(self, *, head: bool) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        with hub._lock:
            hub.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            repo, rest = hub.find_repo(path[len("/api/models/") :])
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found", head=head)
            kind, _, rev = rest.partition("/")
            if kind not in ("revision", "tree"):
                return self._error(404, "EntryNotFound", f"no route {path}", head=head)
            if not hub.resolve_revision(repo, rev):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
            if kind == "revision":
                return self._json(
                    200,
                    {
                        "id": repo.repo_id,
                        "modelId": repo.repo_id,
                        "sha": repo.sha,
                        "private": False,
                        "gated": False,
                        "disabled": False,
                        "tags": [],
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                    },
                )
            return self._json(200, repo.tree())  # one page: no Link header
        repo, rest = hub.find_repo(path.lstrip("/"))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found", head=head)
        kind, _, rest = rest.partition("/")
        rev, _, file = rest.partition("/")
        if kind != "resolve":
            return self._error(404, "EntryNotFound", f"no route {path}", head=head)
        if not hub.resolve_revision(repo, rev):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        if file not in repo.files:
            self.send_response(404)
            for k, v in {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha, "Content-Length": "0"}.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._file(repo, file, head=head)

    def _file(self, repo: _Repo, file: str, *, head: bool) -> None:
        data = repo.files[file]
        headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if repo.is_lfs(file):
            headers["X-Linked-Etag"] = f'"{repo.sha256[file]}"'
            headers["X-Linked-Size"] = str(len(data))
            headers["ETag"] = f'"{repo.sha256[file]}"'
        else:
            headers["ETag"] = f'"{git_blob_id(data)}"'
        start = 0
        rng = self.headers.get("Range")
        status = 200
        if rng and rng.startswith("bytes=") and not head:
            first, _, last = rng[len("bytes=") :].partition("-")
            start = int(first or 0)
            end = int(last) + 1 if last else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            body = data[start:end]
        else:
            body = data
        key = f"/{repo.repo_id}/resolve/{file}"
        drop = self.hub.drop_after.get(file)
        if not head and drop is not None and start == 0 and key not in self.hub._dropped:
            self.hub._dropped.add(key)
            self.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, body, {**headers, "Content-Length": str(len(body))}, head=head)


def main() -> None:  # manual use: python -m tests.hub_server org/name=FOLDER ...
    import sys
    import time

    repos = dict(arg.split("=", 1) for arg in sys.argv[1:])
    with HubServer({k: Path(v) for k, v in repos.items()}) as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
