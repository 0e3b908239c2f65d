"""A network source whose connection drops mid-stream: read again from where it stopped, and when the server is
gone, a retried ``source_unreachable``, never a final ``corrupt_video`` / ``no_frames``. A real HTTP server of the
test's own on 127.0.0.1 that resets connections (TCP RST) after a number of bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from conftest import MEDIA, FileServer

pytestmark = [pytest.mark.models]

VIDEO = MEDIA / "videos/tears_of_steel_10s.mp4"


class Resetting(FileServer):
    """Any response longer than ``reset_after`` bytes is cut there with a TCP reset. ``die``: after the first reset
    the server stops accepting connections."""

    def __init__(self, data: bytes, reset_after: int, die: bool = False):
        super().__init__(data)
        self.reset_after, self.die, self.resets = reset_after, die, 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/clip.mp4"

    def send_body(self, handler, body: bytes) -> None:
        if len(body) <= self.reset_after:
            handler.wfile.write(body)
            return
        handler.wfile.write(body[: self.reset_after])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        self.resets += 1
        if self.die:
            self.socket.close()  # nobody answers any more
        handler.connection.close()


@pytest.fixture()
def serve():
    servers = []

    def start(reset_after: int, die: bool = False) -> Resetting:
        servers.append(Resetting(VIDEO.read_bytes(), reset_after, die).start())
        return servers[-1]

    yield start
    for srv in servers:
        srv.stop()


def test_a_connection_reset_mid_stream_is_read_again_from_where_it_stopped(serve, settings, model, tmp_path):
    from framepipe import pipeline

    srv = serve(reset_after=300_000)  # the file is 760 KB: every long read is cut
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert srv.resets >= 1
    assert result.status == "succeeded", result.error
    local = pipeline.extract(str(VIDEO), str(tmp_path / "local"), settings, model=model)
    assert [t.timestamp_s for t in result.talent_frames] == [t.timestamp_s for t in local.talent_frames]


def test_a_server_gone_mid_stream_is_source_unreachable_and_retried(serve, settings, model, tmp_path):
    from framepipe import pipeline, videorun

    srv = serve(reset_after=300_000, die=True)
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert srv.resets == 1
    assert result.status == "failed" and result.error.type == "source_unreachable", result.error
    assert not videorun.is_final(result)  # a later run tries it again


def test_a_damaged_file_on_a_healthy_server_stays_corrupt(serve, settings, model, tmp_path):
    """The check does not turn real damage into a network error: a truncated file served whole is corrupt."""
    from framepipe import pipeline

    srv = serve(reset_after=10**9)
    srv.data = VIDEO.read_bytes()[:200_000]
    result = pipeline.extract(srv.url, str(tmp_path), settings, model=model)
    assert result.status == "failed" and result.error.type in ("corrupt_video", "no_frames", "not_a_video"), \
        result.error
