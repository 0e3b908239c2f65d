"""A network source whose connection drops mid-stream: read again from where it stopped, and when the server is
gone, a retried ``source_unreachable``, never a final ``corrupt_video`` / ``no_frames``. A real HTTP server of the
test's own on 127.0.0.1 that resets connections (TCP RST) after a number of bytes."""

from __future__ import annotations

import http.server
import socket
import struct
import threading

import pytest

from conftest import MEDIA, free_port

VIDEO = MEDIA / "videos/tears_of_steel_10s.mp4"


class Resetting(http.server.ThreadingHTTPServer):
    """Range-capable; any response longer than ``reset_after`` bytes is cut there with a TCP reset. ``die``: after
    the first reset the server stops accepting connections."""

    def __init__(self, data: bytes, reset_after: int, die: bool = False):
        self.data, self.reset_after, self.die, self.resets = data, reset_after, die, 0
        super().__init__(("127.0.0.1", free_port()), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/clip.mp4"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        data, rng = self.server.data, self.headers.get("Range", "")
        start, end = 0, len(data) - 1
        if rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            start, end = int(a), int(b) if b else len(data) - 1
        body = data[start:end + 1]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if len(body) <= self.server.reset_after:
            self.wfile.write(body)
            return
        self.wfile.write(body[: self.server.reset_after])
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        self.server.resets += 1
        if self.server.die:
            self.server.socket.close()  # nobody answers any more
        self.connection.close()


@pytest.fixture()
def serve():
    servers = []

    def start(reset_after: int, die: bool = False) -> Resetting:
        srv = Resetting(VIDEO.read_bytes(), reset_after, die)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_connection_reset_mid_stream_is_read_again_from_where_it_stopped(serve, settings, model, tmp_path):
    from framepipe import pipeline

    srv = serve(reset_after=300_000)  # the file is 760 KB: every long read is cut
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert srv.resets >= 1
    assert result.status == "succeeded", result.error
    local = pipeline.extract(str(VIDEO), str(tmp_path / "local"), settings, model=model)
    assert [t.timestamp_s for t in result.talent_frames] == [t.timestamp_s for t in local.talent_frames]


def test_a_server_gone_mid_stream_is_source_unreachable_and_retried(serve, settings, model, tmp_path):
    from framepipe import pipeline

    srv = serve(reset_after=300_000, die=True)
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert srv.resets == 1
    assert result.status == "failed" and result.error.type == "source_unreachable", result.error
    assert not pipeline.is_final(result)  # a later run tries it again


def test_a_damaged_file_on_a_healthy_server_stays_corrupt(serve, settings, model, tmp_path):
    """The check does not turn real damage into a network error: a truncated file served whole is corrupt."""
    from framepipe import pipeline

    srv = serve(reset_after=10**9)
    srv.data = VIDEO.read_bytes()[:200_000]
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert result.status == "failed" and result.error.type in ("corrupt_video", "no_frames", "not_a_video"), \
        result.error
