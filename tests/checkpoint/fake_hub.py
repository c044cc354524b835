"""A stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints `huggingface_hub` calls to check a token,
create a repo and make a commit (pre-upload, LFS batch + basic transfer, ndjson commit), with injectable
faults (status codes, Retry-After, delays) and a record of every request and commit."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """Answer the next `times` requests matching (method, path regex) with `status` (None: answer normally)
    after `delay_s`; `times` < 0 means every matching request."""

    method: str
    path: str
    status: int | None = 500
    times: int = 1
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, str]  # path -> sha256 of the content
    started: float
    finished: float


class FakeHub:
    def __init__(self, token: str = "hf_fake_secret_token_1234567890") -> None:
        self.token = token
        self.faults: list[Fault] = []
        self.requests: list[tuple[float, str, str, int]] = []
        self.commits: list[Commit] = []
        self.repos: dict[str, dict[str, Any]] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (LFS and regular files alike)
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times != 0 and fault.method == method and re.search(fault.path, path):
                    fault.times -= 1 if fault.times > 0 else 0
                    return fault
        return None

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.blobs[self.repos[repo_id]["branches"][revision][path]]

    def count(self, method: str, path_regex: str) -> int:
        return sum(1 for _, m, p, _ in self.requests if m == method and re.search(path_regex, p))


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            with hub.lock:
                hub.requests.append((time.time(), self.command, self.path, status))

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _dispatch(self) -> None:
            started = time.time()
            body = self._body()
            fault = hub.take_fault(self.command, self.path)
            if fault is not None:
                time.sleep(fault.delay_s)
                if fault.status is not None:
                    return self._reply(fault.status, {"error": f"injected {fault.status}"}, fault.headers)
            public = self.path.startswith(("/__lfs/", "/api/agent-harnesses"))
            if self.headers.get("Authorization") != f"Bearer {hub.token}" and not public:
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            for pattern, route in ROUTES:
                match = re.fullmatch(pattern, self.path.split("?")[0])
                if match and route[0] == self.command:
                    return route[1](self, body, started, *match.groups())
            self._reply(404, {"error": f"no route {self.command} {self.path}"})

        do_GET = do_POST = do_PUT = _dispatch

        def agent_harnesses(self, body: bytes, started: float) -> None:  # client telemetry registry
            self._reply(200, {"standardEnvVars": [], "harnesses": {}})

        def validate_yaml(self, body: bytes, started: float) -> None:  # model card metadata check
            self._reply(200, {"errors": [], "warnings": []})

        def whoami(self, body: bytes, started: float) -> None:
            self._reply(200, {"type": "user", "name": "tester", "auth": {"accessToken": {"role": "write"}}})

        def create_repo(self, body: bytes, started: float) -> None:
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            with hub.lock:
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = {"private": payload.get("visibility") == "private" or payload.get("private"),
                                      "branches": {"main": {}}}
            self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def preupload(self, body: bytes, started: float, repo_id: str, revision: str) -> None:
            if repo_id not in hub.repos:
                return self._reply(404, {"error": "Repository not found"})
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".model")) else "regular",
                      "shouldIgnore": False, "oid": None} for f in files]
            self._reply(200, {"files": modes})

        def lfs_batch(self, body: bytes, started: float, repo_id: str) -> None:
            objects = []
            unique = {obj["oid"]: obj for obj in json.loads(body)["objects"]}  # one transfer per content, as git-lfs does
            for obj in unique.values():
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.blobs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/__lfs/{obj['oid']}"}}
                objects.append(entry)
            self._reply(200, {"transfer": "basic", "objects": objects})

        def lfs_put(self, body: bytes, started: float, oid: str) -> None:
            if hashlib.sha256(body).hexdigest() != oid:
                return self._reply(400, {"error": "sha256 mismatch"})
            with hub.lock:
                hub.blobs[oid] = body
            self._reply(200, {})

        def commit(self, body: bytes, started: float, repo_id: str, revision: str) -> None:
            if repo_id not in hub.repos:
                return self._reply(404, {"error": "Repository not found"})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            summary, files = "", {}
            for line in lines:
                kind, value = line["key"], line["value"]
                if kind == "header":
                    summary = value["summary"]
                elif kind == "file":
                    content = base64.b64decode(value["content"])
                    oid = hashlib.sha256(content).hexdigest()
                    with hub.lock:
                        hub.blobs[oid] = content
                    files[value["path"]] = oid
                elif kind == "lfsFile":
                    if value["oid"] not in hub.blobs:
                        return self._reply(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                    files[value["path"]] = value["oid"]
            with hub.lock:
                hub.repos[repo_id]["branches"].setdefault(revision, {}).update(files)
                hub.commits.append(Commit(repo_id, revision, summary, files, started, time.time()))
                oid = hashlib.sha1(f"{len(hub.commits)}".encode()).hexdigest()
            self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                              "pullRequestUrl": None})

    ROUTES = [
        (r"/api/agent-harnesses", ("GET", Handler.agent_harnesses)),
        (r"/api/validate-yaml", ("POST", Handler.validate_yaml)),
        (r"/api/whoami-v2", ("GET", Handler.whoami)),
        (r"/api/repos/create", ("POST", Handler.create_repo)),
        (r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", ("POST", Handler.preupload)),
        (r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", ("POST", Handler.lfs_batch)),
        (r"/__lfs/([0-9a-f]{64})", ("PUT", Handler.lfs_put)),
        (r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", ("POST", Handler.commit)),
    ]
    return Handler
