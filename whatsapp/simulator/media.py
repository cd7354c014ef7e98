"""The simulator's media server: the files of the messages it sends, and the
files clients upload to send.

As WhatsApp's media servers (mmg.whatsapp.net), it serves a message's file at
the message's `directPath`; old media answer 410, and a test can make a file
broken (500), truncated or slow. Uploads (`POST /upload`) are kept so that a
send can refer to them and /sends can show what each phone received.
"""

import asyncio
import hashlib
import secrets

from aiohttp import web

from . import protocol as p


class MediaError(ValueError):
    pass


class MediaStore:
    def __init__(self):
        self.files = {}  # token -> record
        self.served = 0
        self.refused = 0

    def add(self, kind, options=None):
        """Store a file for a `message` frame of `kind`; returns the frame's media."""
        options = options if isinstance(options, dict) else {}
        if kind not in p.MEDIA_KINDS:
            raise MediaError(f"{kind} messages carry no media")
        state = options.get("state", "ok")
        if state not in p.MEDIA_STATES:
            raise MediaError(f"unknown media state {state!r} ({', '.join(p.MEDIA_STATES)})")
        if options.get("content_hex"):
            try:
                data = bytes.fromhex(options["content_hex"])
            except ValueError:
                raise MediaError("content_hex is not hexadecimal") from None
        else:
            size = options.get("size", 20 * 1024)
            if not isinstance(size, int) or not 1 <= size <= p.MAX_MEDIA_BYTES:
                raise MediaError(f"media size must be an integer from 1 to {p.MAX_MEDIA_BYTES}")
            data = p.sample_media(kind, size)
        mimetype = str(options.get("mimetype") or p.MEDIA_TYPES[kind])
        token = secrets.token_hex(16)
        self.files[token] = {
            "data": data,
            "mimetype": mimetype,
            "state": state,
            "fails_left": int(options.get("fail_times", -1)),
            "delay": float(options.get("delay", 30.0)),
        }
        declared = len(data) if "declared_size" not in options else int(options["declared_size"])
        return {
            "path": f"/media/{token}",
            "mimetype": mimetype,
            "size": declared,
            "sha256": hashlib.sha256(data).hexdigest(),
            "file_name": str(options.get("file_name") or ""),
        }

    def upload(self, data, mimetype=""):
        token = secrets.token_hex(16)
        self.files[token] = {
            "data": data,
            "mimetype": mimetype,
            "state": "ok",
            "fails_left": 0,
            "delay": 0.0,
        }
        return token

    def describe(self, path):
        """Size and SHA-256 of an uploaded file (for the send record), or MediaError."""
        token = str(path or "").rpartition("/")[2]
        record = self.files.get(token)
        if record is None:
            raise MediaError(f"no uploaded file at {path!r}")
        data = record["data"]
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    async def serve(self, request):
        record = self.files.get(request.match_info["token"])
        if record is None:
            self.refused += 1
            raise web.HTTPNotFound(text="no such media")
        state = record["state"]
        if state == "expired":
            self.refused += 1
            raise web.HTTPGone(text="media expired")
        if state == "broken" and record["fails_left"] != 0:
            record["fails_left"] -= 1
            self.refused += 1
            raise web.HTTPInternalServerError(text="media server failure")
        if state == "slow":
            await asyncio.sleep(record["delay"])
        data = record["data"]
        if state == "truncated":
            data = data[: len(data) // 2]
        self.served += 1
        return web.Response(body=data, content_type="application/octet-stream")
