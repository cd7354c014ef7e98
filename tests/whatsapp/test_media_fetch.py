"""Media given as a URL: fetched by the server under the webhooks' address
rules, against a real HTTP server on loopback (in a thread of this process).
Loopback plays the public internet here (`public=`); every other address is
judged as in production, so a redirect to a private address is refused."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from whatsapp.services.media_outbound import MediaFetchFailed, MediaTooLarge, fetch_media_url
from whatsapp.simulator.protocol import sample_media

PHOTO = sample_media("image", 200_000)
LOOPBACK = frozenset({"127.0.0.1"})


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/photo.jpg":
            self._send(PHOTO)
        elif self.path == "/to-private":
            self._redirect("http://10.0.0.7/photo.jpg")
        elif self.path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path == "/hop":
            self._redirect("/photo.jpg")
        elif self.path == "/loop":
            self._redirect("/loop")
        elif self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PHOTO)))
            self.end_headers()
            self.wfile.write(PHOTO[:50_000])
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/slow":
            time.sleep(3)
            self._send(PHOTO)
        elif self.path == "/big":
            self._send(PHOTO * 3)
        else:
            self.send_error(404)

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading (over its limit)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def media_temp(settings, tmp_path):
    settings.WHATSAPP_MEDIA = {**settings.WHATSAPP_MEDIA, "TEMP_DIR": str(tmp_path / "tmp")}
    settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
    return tmp_path / "tmp"


def leftovers(directory):
    return list(directory.iterdir()) if directory.exists() else []


def fetch(url, **kwargs):
    return fetch_media_url(url, schemes=("http",), public=LOOPBACK, **kwargs)


def test_a_public_url_is_fetched_into_a_temporary_file(server, media_temp):
    path = fetch(f"{server}/photo.jpg")
    assert Path(path).read_bytes() == PHOTO and Path(path).parent == media_temp


def test_a_redirect_is_followed_and_checked_again(server):
    assert Path(fetch(f"{server}/hop")).read_bytes() == PHOTO


@pytest.mark.parametrize("path", ["/to-private", "/to-metadata"])
def test_a_redirect_to_a_private_address_is_refused(server, path, media_temp):
    with pytest.raises(MediaFetchFailed, match="private/loopback/link-local"):
        fetch(server + path)
    assert leftovers(media_temp) == []  # nothing left behind


def test_endless_redirects_stop(server):
    with pytest.raises(MediaFetchFailed, match="redirects"):
        fetch(f"{server}/loop")


def test_a_truncated_download_is_refused_and_leaves_no_file(server, media_temp):
    with pytest.raises(MediaFetchFailed, match="truncated"):
        fetch(f"{server}/truncated")
    assert leftovers(media_temp) == []


def test_a_download_that_hangs_times_out(server):
    started = time.monotonic()
    with pytest.raises(MediaFetchFailed, match="timed out after 0.5s"):
        fetch(f"{server}/slow", timeout=0.5)
    assert time.monotonic() - started < 2.5


def test_a_file_over_the_limit_is_refused_before_it_is_read(server, media_temp):
    with pytest.raises(MediaTooLarge, match="limit is 300000"):
        fetch(f"{server}/big", max_bytes=300_000)
    assert leftovers(media_temp) == []


def test_loopback_itself_is_refused_without_the_test_s_exception(server):
    with pytest.raises(MediaFetchFailed, match="private/loopback"):
        fetch_media_url(f"{server}/photo.jpg", schemes=("http",))
