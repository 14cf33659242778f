"""Shared fixtures: every test gets its own GCPO_HOME (so its own database), offline."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The real data sets live in ../shared/data beside the checkout (CI lays shared/ beside its
# clone too); GCPO_SHARED_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("GCPO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


@pytest.fixture(autouse=True)
def gcpo_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "gcpo-home"
    monkeypatch.setenv("GCPO_HOME", str(home))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    return home


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db(gcpo_home):
    from gcpo_cli.store import open_db

    d = open_db()
    yield d
    d.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


class JsonHandler(BaseHTTPRequestHandler):
    """The base of the tests' stand-ins for remote JSON APIs (a teacher server, the Hub, vLLM):
    quiet, and `send(code, obj)` answers with JSON."""

    def log_message(self, *args):
        pass

    def send(self, code: int, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LocalServer:
    """A JsonHandler subclass served on 127.0.0.1 (a free port) from a thread: `url`, `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
