"""A small Hugging Face Hub on 127.0.0.1 for tests: `LocalHub`, the fixture `hub_server`, the factory `hub_fixture`.

It answers the HTTP calls huggingface_hub 2.x, transformers 5.x and datasets 5.x really make, so a push and a load
run the real client code paths with no network. Model and dataset repos share every route; as on the Hub, a dataset
repo's URLs carry a `datasets` prefix (`{kind}` below is `models` or `datasets`, `{prefix}` is empty or `datasets/`):

- write: `POST /api/repos/create`, `/api/validate-yaml`, `/api/{kind}/{repo}/preupload/{rev}`,
  `/api/{kind}/{repo}/branch/{branch}`, `/{prefix}{repo}.git/info/lfs/objects/batch` and `/verify` (Git LFS batch
  API, basic transfer), `/api/{kind}/{repo}/commit/{rev}` (ndjson);
- read: `GET /api/{kind}/{repo}[/revision/{rev}]` (repo info), `GET /api/{kind}/{repo}/tree/{rev}[/{path}]`,
  `HEAD`/`GET /{prefix}{repo}/resolve/{rev}/{path}`.

Like huggingface.co it has two origins, each a free port on 127.0.0.1: the hub (API, git data) and storage (LFS
objects, the Hub's S3/CDN). LFS uploads are `PUT storage/lfs/{sha256}`; `/resolve` of an LFS file answers 302 to
storage with `X-Linked-Etag` / `X-Linked-Size`, so hf_hub_download takes the path it takes on the real Hub.
Repos live in memory as commits of git blobs (an LFS file's blob is its pointer), so tests can check what landed.
Not implemented: Xet storage (preupload never offers it; clients must set HF_HUB_DISABLE_XET=1), Space repos, pull
requests, paths-info (no client path tested here calls it), Range requests (resumed downloads), pagination (every
listing fits one page), and the dataset viewer (`datasets-server.` + the endpoint's host, another origin:
`client_pointed_at` turns datasets' use of it off).
"""

import base64
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote

import datasets
import pytest
import yaml
from huggingface_hub import constants
from loopback import LoopbackServer

# The Hub's default .gitattributes: these files, any file of 10 MiB or more and any binary file go through Git LFS.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.model",
                "*.gguf", "*.npy", "*.npz", "*.arrow", "*.parquet", "*.zip", "*.gz", "*.tar")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
API = rf"/api/(?P<kind>models|datasets)/{REPO}"  # a repo's API routes
URL = rf"/(?P<kind>datasets/)?{REPO}"  # a repo's git and file URLs (a model's have no prefix)
OID = r"(?P<oid>[0-9a-f]{64})"
BAD_TOKEN = "Invalid credentials in Authorization header"  # the Hub's wording; huggingface_hub keys on it


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def needs_lfs(path: str, size: int, sample: bytes) -> bool:
    """The Hub's rule for a file's upload mode: .gitattributes pattern, size, or binary content."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS) or size >= LFS_MIN_SIZE or b"\0" in sample


def front_matter(readme: str) -> dict | None:
    """The YAML metadata block of a model card, as the Hub parses it into `cardData`; ValueError if malformed."""
    match = re.match(r"---\n(.*?)\n---\n", readme, flags=re.S)
    if match is None:
        return None
    try:
        metadata = yaml.safe_load(match.group(1))
    except yaml.YAMLError as error:
        raise ValueError(f"invalid YAML metadata: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError("YAML metadata must be a mapping")
    return metadata


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Blob:
    """One file of a commit: its git blob (the bytes, or the LFS pointer) and, for LFS files, the object's sha256."""

    data: bytes
    lfs_oid: str | None = None
    lfs_size: int | None = None

    @classmethod
    def lfs(cls, oid: str, size: int) -> "Blob":
        return cls(lfs_pointer(oid, size), oid, size)

    @property
    def size(self) -> int:
        return len(self.data) if self.lfs_oid is None else self.lfs_size

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": git_blob_oid(self.data), "size": self.size, "path": path}
        if self.lfs_oid is not None:
            entry["lfs"] = {"oid": self.lfs_oid, "size": self.lfs_size, "pointerSize": len(self.data)}
        return entry


@dataclass(frozen=True)
class Commit:
    oid: str
    message: str
    files: dict
    date: datetime


@dataclass
class Repo:
    """A model or dataset repo: commits by oid and branches pointing at them; created with the Hub's initial commit."""

    repo_id: str
    private: bool
    repo_type: str = "model"
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    commits: dict = field(default_factory=dict)
    branches: dict = field(default_factory=dict)

    def __post_init__(self):
        self.commit("main", "initial commit", {".gitattributes": Blob(GITATTRIBUTES)})

    def resolve(self, revision: str) -> Commit | None:
        return self.commits.get(self.branches.get(revision, revision))

    def commit(self, branch: str, message: str, files: dict) -> Commit:
        parent = self.branches.get(branch, "")
        listing = "".join(f"{path} {git_blob_oid(blob.data)}\n" for path, blob in sorted(files.items()))
        oid = hashlib.sha1(f"{parent}\n{message}\n{len(self.commits)}\n{listing}".encode()).hexdigest()
        self.commits[oid] = Commit(oid, message, dict(files), datetime.now(timezone.utc))
        self.branches[branch] = oid
        return self.commits[oid]


def tree_listing(files: dict, folder: str, recursive: bool) -> list:
    """The entries of `folder` (its children, or with `recursive` everything below it, folders included)."""
    prefix = f"{folder}/" if folder else ""
    entries = {}
    for path, blob in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        shown_folders = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
        for depth in range(1, shown_folders + 1):
            sub_folder = prefix + "/".join(parts[:depth])
            entries.setdefault(sub_folder, {"type": "directory", "oid": git_blob_oid(sub_folder.encode()),
                                            "size": 0, "path": sub_folder})
        if recursive or len(parts) == 1:
            entries[path] = blob.tree_entry(path)
    return list(entries.values())


class Handler(BaseHTTPRequestHandler):
    """Dispatches requests through the subclass's `routes` table: (methods, path regex, method name)."""

    routes = ()
    timeout = 30  # seconds a connection may sit idle: a stuck client cannot hold a thread forever

    def do_GET(self):
        self.dispatch()

    do_HEAD = do_POST = do_PUT = do_GET

    @property
    def hub(self) -> "LocalHub":
        return self.server.hub

    def dispatch(self):
        """Calls the route's method with the path's named groups; a `kind` group sets `repo_type` instead."""
        path, _, query = self.path.partition("?")
        self.query = parse_qs(query)
        for methods, pattern, name in self.routes:
            match = re.fullmatch(pattern, path)
            if match and self.command in methods.split():
                arguments = {key: unquote(value or "") for key, value in match.groupdict().items()}
                self.repo_type = "dataset" if arguments.pop("kind", "").startswith("datasets") else "model"
                return getattr(self, name)(**arguments)
        self.hub.unhandled.append(f"{self.command} {self.path}")
        self.error(404, None, f"LocalHub has no route for {self.command} {path}")

    def body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return b"".join(iter(self.read_chunk, b""))
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def read_chunk(self) -> bytes:
        size = int(self.rfile.readline().split(b";")[0], 16)
        chunk = self.rfile.read(size)
        self.rfile.readline()  # the CRLF closing the chunk (after the last one: the end of the empty trailer)
        return chunk

    def json_body(self):
        return json.loads(self.body())

    def send(self, status: int, body: bytes = b"", headers: dict | None = None,
             content_type: str = "application/octet-stream"):
        self.send_response(status)
        for name, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, payload, status: int = 200, headers: dict | None = None):
        self.send(status, json.dumps(payload).encode(), headers, content_type="application/json")

    def error(self, status: int, code: str | None, message: str, headers: dict | None = None):
        """An error the way the Hub sends it: huggingface_hub maps X-Error-Code to its exception classes."""
        error_headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
        self.json({"error": message}, status, error_headers)

    def authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def log_request(self, code="-", size="-"):
        self.hub.requests.append((self.server.name, self.command, self.path, int(code)))

    def log_message(self, format, *args):
        """Silent: the request log is `LocalHub.requests`."""


class HubHandler(Handler):
    """The hub origin: repo API, Git LFS batch API, commits, and file resolution."""

    routes = (
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", rf"{API}/preupload/(?P<revision>[^/]+)", "preupload"),
        ("POST", rf"{API}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"{URL}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", rf"{URL}\.git/info/lfs/objects/verify", "lfs_verify"),
        ("POST", rf"{API}/commit/(?P<revision>[^/]+)", "commit"),
        ("GET HEAD", rf"{API}(?:/revision/(?P<revision>[^/]+))?", "repo_info"),
        ("GET", rf"{API}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.+))?", "tree"),
        ("GET HEAD", rf"{URL}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "resolve"),
    )

    repo_type = "model"  # set by `dispatch` from the route: "dataset" for `/api/datasets/...` and `/datasets/...`

    @property
    def repos(self) -> dict:
        """The repos of this request's type: model and dataset repos are separate namespaces, as on the Hub."""
        return self.hub.repos_of(self.repo_type)

    def repo_url(self, repo_id: str) -> str:
        return f"{self.hub.endpoint}/{'datasets/' if self.repo_type == 'dataset' else ''}{repo_id}"

    # --- write side ---------------------------------------------------------------------------------------------
    def create_repo(self):
        if not self.authorized():
            return self.error(401, None, BAD_TOKEN)
        request = self.json_body()
        self.repo_type = request.get("type", "model")
        if self.repo_type not in ("model", "dataset"):
            return self.error(400, None, "LocalHub hosts model and dataset repos only")
        repo_id = f"{request.get('organization') or self.hub.user}/{request['name']}"
        url = self.repo_url(repo_id)
        with self.hub.lock:
            if repo_id in self.repos:
                return self.json({"error": f"You already created this {self.repo_type} repo", "url": url}, 409)
            self.repos[repo_id] = Repo(repo_id, request.get("visibility") == "private", self.repo_type)
        self.json({"url": url, "name": repo_id})

    def validate_yaml(self):
        try:
            front_matter(self.json_body()["content"])
        except ValueError as error:
            return self.json({"errors": [{"message": str(error)}]}, 400)
        self.json({"errors": [], "warnings": []})

    def preupload(self, repo_id, revision):
        repo, commit = self.writable_revision(repo_id, revision)
        if commit is None:
            return
        answers = []
        for file in self.json_body()["files"]:
            lfs = needs_lfs(file["path"], file["size"], base64.b64decode(file["sample"]))
            existing = commit.files.get(file["path"])  # the oid huggingface_hub compares to skip unchanged files
            oid = existing and (existing.lfs_oid or git_blob_oid(existing.data))
            answers.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": oid})
        self.json({"files": answers, "commitOid": commit.oid})

    def create_branch(self, repo_id, branch):
        repo, start = self.writable_revision(repo_id, self.json_body().get("startingPoint") or "main")
        if start is None:
            return
        with self.hub.lock:
            if branch in repo.branches:
                return self.error(409, None, f"Reference refs/heads/{branch} already exists")
            repo.branches[branch] = start.oid
        self.json({})

    def lfs_batch(self, repo_id):
        repo, _ = self.writable_revision(repo_id, "main")
        if repo is None:
            return
        request = self.json_body()
        if request.get("operation") != "upload":
            return self.error(400, None, "LocalHub serves downloads through /resolve, not the LFS batch API")
        verify = {"href": f"{self.repo_url(repo_id)}.git/info/lfs/objects/verify"}
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:  # stored objects need no upload: LFS deduplication
                entry["actions"] = {"upload": {"href": f"{self.hub.storage_url}/lfs/{obj['oid']}"}, "verify": verify}
            objects.append(entry)
        self.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_verify(self, repo_id):
        if not self.authorized():
            return self.error(401, None, BAD_TOKEN)
        request = self.json_body()
        data = self.hub.lfs_objects.get(request["oid"])
        if data is None or len(data) != request["size"]:
            return self.error(404, None, f"LFS object {request['oid']} of size {request['size']} was not uploaded")
        self.json({})

    def commit(self, repo_id, revision):
        repo, parent = self.writable_revision(repo_id, revision)
        if parent is None:
            return
        if revision not in repo.branches:
            return self.error(400, None, f"can only commit to a branch, not {revision!r}")
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return self.error(400, None, "a commit starts with its header line")
        files, problem = self.apply_operations(dict(parent.files), lines[1:])
        if problem:
            return self.error(400, None, problem)
        with self.hub.lock:
            commit = repo.commit(revision, lines[0]["value"]["summary"], files)
        self.json({"success": True, "commitOid": commit.oid, "hookOutput": "",
                   "commitUrl": f"{self.repo_url(repo_id)}/commit/{commit.oid}"})

    def apply_operations(self, files: dict, operations: list) -> tuple:
        """Applies ndjson commit operations to `files`; returns (files, None) or (None, why the commit is refused)."""
        for operation in operations:
            key, value = operation["key"], operation["value"]
            path = value["path"]
            if key == "file":
                data = base64.b64decode(value["content"])
                if needs_lfs(path, len(data), data[:512]):
                    return None, f"{path}: binary or large files must be uploaded with Git LFS"
                files[path] = Blob(data)
            elif key == "lfsFile":
                data = self.hub.lfs_objects.get(value["oid"])
                if data is None or len(data) != value.get("size", len(data)):
                    return None, f"{path}: LFS object {value['oid']} was never uploaded"
                files[path] = Blob.lfs(value["oid"], len(data))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    return None, f"{path}: A file with this name doesn't exist"
            elif key == "deletedFolder":
                files = {name: blob for name, blob in files.items() if not name.startswith(path.rstrip("/") + "/")}
            else:
                return None, f"unsupported commit operation {key!r} on {path}"
        return files, None

    def writable_revision(self, repo_id, revision):
        """(repo, commit) for a write, or (None, None) after sending the error."""
        if not self.authorized():
            self.error(401, None, BAD_TOKEN)
            return None, None
        return self.readable_revision(repo_id, revision)

    # --- read side ----------------------------------------------------------------------------------------------
    def readable_revision(self, repo_id, revision):
        """(repo, commit), or (None, None) after sending RepoNotFound / RevisionNotFound as the Hub does."""
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self.authorized()):
            self.error(401, "RepoNotFound", "Repository not found")
            return None, None
        commit = repo.resolve(revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None, None
        return repo, commit

    def repo_info(self, repo_id, revision=None):
        """Model info or dataset info: the same fields, plus a model's id, pipeline and library."""
        repo, commit = self.readable_revision(repo_id, revision or "main")
        if commit is None:
            return
        readme = commit.files.get("README.md")
        card = front_matter(readme.data.decode()) if readme else None
        info = {
            "_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "createdAt": iso(repo.created), "lastModified": iso(commit.date), "tags": (card or {}).get("tags", []),
            "cardData": card, "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }
        if repo.repo_type == "model":
            info.update(modelId=repo_id, pipeline_tag=(card or {}).get("pipeline_tag"),
                        library_name=(card or {}).get("library_name"))
        self.json(info)

    def tree(self, repo_id, revision, folder=""):
        repo, commit = self.readable_revision(repo_id, revision)
        if commit is None:
            return
        entries = tree_listing(commit.files, folder.strip("/"), self.query.get("recursive") == ["true"])
        if folder and not entries:
            return self.error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        self.json(entries)

    def resolve(self, repo_id, revision, path):
        """Regular files: 200 with ETag = git oid. LFS files: 302 to storage, with the object's sha256 and size."""
        repo, commit = self.readable_revision(repo_id, revision)
        if commit is None:
            return
        blob = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if blob is None:
            return self.error(404, "EntryNotFound", f"{path} does not exist on {revision}", headers)
        headers["ETag"] = f'"{git_blob_oid(blob.data)}"'
        if blob.lfs_oid is None:
            return self.send(200, blob.data, headers)
        self.send(302, headers={**headers, "Location": f"{self.hub.storage_url}/lfs/{blob.lfs_oid}",
                                "X-Linked-Etag": f'"{blob.lfs_oid}"', "X-Linked-Size": str(blob.lfs_size)})


class StorageHandler(Handler):
    """The storage origin (the Hub's S3/CDN): LFS objects by sha256, uploaded with PUT, downloaded with GET."""

    routes = (
        ("PUT", rf"/lfs/{OID}", "upload"),
        ("GET HEAD", rf"/lfs/{OID}", "download"),
    )

    def upload(self, oid):
        data = self.body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self.error(400, None, f"uploaded content does not hash to {oid}")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = data
            self.hub.lfs_uploads.append(oid)
        self.send(200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    def download(self, oid):
        data = self.hub.lfs_objects.get(oid)
        if data is None:
            return self.error(404, None, f"no LFS object {oid}")
        self.send(200, data, {"ETag": f'"{oid}"'})


class LocalHub:
    """The hub and storage servers on free 127.0.0.1 ports, sharing the in-memory state tests inspect.

    `repos` and `dataset_repos` map repo id to the model and the dataset `Repo`s; `lfs_objects` maps sha256 to
    bytes; `lfs_uploads` lists the oids received through LFS PUTs; `requests` logs (origin, method, path, status);
    `unhandled` lists requests no route matched.
    Writes need `Authorization: Bearer {token}`; reads of public repos are anonymous.
    """

    def __init__(self, token: str = "hf_localhub_token", user: str = "user"):
        self.token, self.user = token, user
        self.repos, self.dataset_repos, self.lfs_objects = {}, {}, {}
        self.lfs_uploads, self.requests, self.unhandled = [], [], []
        self.lock = threading.Lock()
        self.servers = [LoopbackServer(HubHandler, hub=self, name="hub"),
                        LoopbackServer(StorageHandler, hub=self, name="storage")]
        self.endpoint, self.storage_url = (server.url for server in self.servers)

    def close(self):
        for server in self.servers:
            server.close()

    def __enter__(self) -> "LocalHub":
        return self

    def __exit__(self, *exc_info):
        self.close()

    def repos_of(self, repo_type: str) -> dict:
        return self.dataset_repos if repo_type == "dataset" else self.repos

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict:
        """Path -> `Blob` of a revision, for assertions on what landed."""
        return self.repos_of(repo_type)[repo_id].resolve(revision).files

    def client_env(self, hf_home) -> dict:
        """The environment for a subprocess that should use this hub as a fresh, online, anonymous client."""
        env = {key: value for key, value in os.environ.items()
               if key not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=os.fspath(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HUB_DISABLE_XET="1")
        return env


@contextlib.contextmanager
def client_pointed_at(hub: LocalHub):
    """Makes huggingface_hub and datasets in this process use `hub`: its endpoint, online (the test conftest sets
    offline mode), no Xet. Both read these settings once at import, hence patching their constants (and those derived
    from the endpoint), not the environment. datasets is also kept off the two other origins it calls: the download
    counter (a HEAD to S3) and the dataset viewer's Parquet export (`datasets-server.{host}`, not served here).
    Name lookups of any host but 127.0.0.1 fail at once and are logged in `hub.unhandled` as `LOOKUP {host}`."""
    getaddrinfo = socket.getaddrinfo

    def local_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", b"127.0.0.1"):
            hub.unhandled.append(f"LOOKUP {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"LocalHub tests reach 127.0.0.1 only, not {host}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", local_only)
        patch.setattr(constants, "ENDPOINT", hub.endpoint)
        patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                      hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        patch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        patch.setattr(datasets.config, "HF_ENDPOINT", hub.endpoint)
        patch.setattr(datasets.config, "HUB_DATASETS_URL",
                      hub.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
        patch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
        patch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
        yield hub


def hub_fixture(scope: str = "module", name: str = "hub_server"):
    """A pytest fixture yielding a running `LocalHub` that huggingface_hub in the test process talks to.

    Import the default one (`from hub_server import hub_server`) or make another: `fresh_hub = hub_fixture(
    "function", name="fresh_hub")`.
    """

    @pytest.fixture(scope=scope, name=name)
    def running_hub():
        with LocalHub() as hub, client_pointed_at(hub):
            yield hub

    return running_hub


hub_server = hub_fixture()
