"""A small stand-in for the Hugging Face Hub on 127.0.0.1, for download tests without the
network: the endpoints ``huggingface_hub`` uses to download files, answered from files
in memory. Tests point ``HF_ENDPOINT`` at it; no library code is mocked."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class Repo:
    """A repo's files at ``main``; ``revisions`` maps other branch names (Pythia's
    ``step1000``) to the Repo of that revision, each with its own commit."""

    def __init__(self, files: dict[str, bytes], commit: str | None = None, gated: bool = False,
                 revisions: dict[str, Repo] | None = None):
        self.files = files
        self.commit = commit or hashlib.sha1(b"".join(files[k] for k in sorted(files))).hexdigest()
        self.gated = gated
        self.revisions = revisions or {}

    def at(self, revision: str) -> Repo | None:
        """The repo at ``revision`` (a branch name or a commit), None when it has none."""
        if revision in ("", "main", self.commit):
            return self
        return next((repo for name, repo in self.revisions.items()
                     if revision in (name, repo.commit)), None)

    @classmethod
    def from_folder(cls, folder: Path, **kwargs) -> Repo:
        return cls({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}, **kwargs)


class HubServer:
    """``with HubServer({"org/name": Repo(...)}) as hub: hub.url``; ``hub.requests`` lists
    every request (method, path) it answered."""

    def __init__(self, repos: dict[str, Repo], truncate: dict[str, int] | None = None):
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        self.truncate = truncate or {}  # file name -> bytes sent before the connection drops
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                path = unquote(self.path.split("?")[0])
                server.requests.append((self.command, path))
                if path.startswith("/api/models/"):
                    return self.api(path.removeprefix("/api/models/"))
                if "/resolve/" in path:
                    repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                    revision, _, filename = rest.partition("/")
                    return self.resolve(repo_id, revision, filename, body)
                self.error(404, "RepoNotFound")

            def api(self, rest: str):
                repo_id, _, revision = rest.partition("/revision/")
                repo_id = repo_id.split("/tree/")[0]
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self.error(401, "RepoNotFound")
                if repo.gated:
                    return self.error(403, "GatedRepo")
                repo = repo.at(revision)
                if repo is None:
                    return self.error(404, "RevisionNotFound")
                doc = {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                       "siblings": [{"rfilename": name} for name in repo.files]}
                self.send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"})

            def resolve(self, repo_id: str, revision: str, filename: str, body: bool):
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self.error(401, "RepoNotFound")
                if repo.gated:
                    return self.error(403, "GatedRepo")
                repo = repo.at(revision)
                if repo is None:
                    return self.error(404, "RevisionNotFound")
                if filename not in repo.files:
                    return self.error(404, "EntryNotFound")
                data = repo.files[filename]
                headers = {"X-Repo-Commit": repo.commit,
                           "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
                           "Content-Type": "application/octet-stream"}
                cut = server.truncate.get(filename)
                if body and cut is not None:  # announce everything, send a part, hang up
                    self.send_response(200)
                    for k, v in {**headers, "Content-Length": str(len(data))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.send(200, data if body else b"", headers, length=len(data))

            def error(self, status: int, code: str):
                self.send(status, json.dumps({"error": code}).encode(),
                          {"X-Error-Code": code, "X-Error-Message": code,
                           "Content-Type": "application/json"})

            def send(self, status: int, data: bytes, headers: dict, length: int | None = None):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                if data:
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
