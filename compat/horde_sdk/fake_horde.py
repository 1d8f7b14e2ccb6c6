#!/usr/bin/env python3
"""A tiny stand-in for the AI Horde coordinator, used only to test roundtrip.py itself offline.

It answers the handful of endpoints roundtrip.py uses with bodies shaped like the public AI Horde's
(see /work/shared/docs/horde-api.md: Flask-RESTX marshalling, so absent fields come back as null,
`seed` is a string in both the pop payload and /status, and so on). It is NOT a reference
implementation of anything else; one request, one worker, no kudos, no rate limits.

    python fake_horde.py --port 7398 --apikey <22 chars> [--quirk int-seed|put-201|no-id|nulls-in-skipped]

The quirks reproduce server mistakes that break horde-sdk users, to show how roundtrip.py reports them.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ARGS: argparse.Namespace
REQUESTS: dict[str, dict[str, Any]] = {}  # WP id -> state
JOBS: dict[str, str] = {}  # procgen id -> WP id
BLOBS: dict[str, bytes] = {}  # procgen id -> uploaded image
WORKER_ID = str(uuid.uuid4())


def status_lite(wp: dict[str, Any]) -> dict[str, Any]:
    finished = 1 if wp["generation"] is not None else 0
    processing = 1 if wp["job_id"] and not finished else 0
    waiting = 0 if wp["job_id"] else 1
    return {
        "finished": finished,
        "processing": processing,
        "restarted": 0,
        "waiting": waiting,
        "done": bool(finished),
        "faulted": False,
        "wait_time": 0 if finished else 10,
        "queue_position": 1 if waiting else 0,
        "kudos": 5.0 if finished else 1.0,
        "is_possible": True,
    }


class Handler(BaseHTTPRequestHandler):
    server_version = "fake-horde/0"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep the test output readable
        if ARGS.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _authorized(self) -> bool:
        if self.headers.get("apikey") != ARGS.apikey:
            self._send(401, {"message": "No user matching sent API Key. Have you remembered to register?", "rc": "InvalidAPIKey"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        if path == "/api/v2/status/heartbeat":
            return self._send(200, {"message": "OK", "version": "5.1.5", "queue": 0, "threads": 8,
                                    "active_count": 1, "db_connection": True})
        if path == "/api/v2/find_user":
            if not self._authorized():
                return None
            return self._send(200, {
                "username": "sdk#1", "id": 1, "kudos": 10000.0,
                "kudos_details": {"accumulated": 0, "gifted": 0, "donated": 0, "admin": 10000, "received": 0,
                                  "recurring": 0, "awarded": 0, "styled": 0},
                "usage": {}, "contributions": {},
                "records": {"usage": {"megapixelsteps": 0, "tokens": 0},
                            "contribution": {"megapixelsteps": 0, "tokens": 0},
                            "fulfillment": {"image": 0, "text": 0, "interrogation": 0},
                            "request": {"image": 0, "text": 0, "interrogation": 0},
                            "style": {"image": 0, "text": 0}},
                "concurrency": 30, "worker_invited": 0, "moderator": True, "trusted": True, "flagged": False,
                "pseudonymous": False, "worker_count": 1, "account_age": 120, "service": False, "deleted": False,
                "education": False, "customizer": False, "styles": [], "worker_ids": [WORKER_ID],
                "sharedkey_ids": [], "contact": None, "vpn": False, "special": False,
                "active_generations": {"image": [k for k, v in REQUESTS.items() if v["generation"] is None],
                                       "text": [], "alchemy": []},
            })
        if path.startswith("/r2/"):
            blob = BLOBS.get(path[len("/r2/"):])
            return self._send(200, blob, "image/webp") if blob else self._send(404, {"message": "no such object"})
        m = re.fullmatch(r"/api/v2/generate/(check|status)/([0-9a-f-]+)", path)
        if m:
            wp = REQUESTS.get(m.group(2))
            if wp is None:
                return self._send(404, {"message": f"Request with ID '{m.group(2)}' not found", "rc": "RequestNotFound"})
            body = status_lite(wp)
            if m.group(1) == "status":
                body["shared"] = False
                body["generations"] = []
                if wp["generation"] is not None:
                    host = self.headers.get("Host")
                    img = (f"http://{host}/r2/{wp['job_id']}" if wp["r2"]
                           else base64.b64encode(BLOBS[wp["job_id"]]).decode())
                    body["generations"].append({
                        "img": img, "seed": str(wp["seed"]), "worker_id": WORKER_ID, "worker_name": wp["worker_name"],
                        "model": "stable_diffusion", "id": wp["job_id"], "censored": False, "gen_metadata": [],
                        "state": "ok",
                    })
            return self._send(200, body)
        return self._send(404, {"message": "Not Found"})

    def do_DELETE(self) -> None:  # noqa: N802
        m = re.fullmatch(r"/api/v2/generate/status/([0-9a-f-]+)", self.path)
        wp = REQUESTS.get(m.group(1)) if m else None
        if wp is None:
            return self._send(404, {"message": "not found", "rc": "RequestNotFound"})
        body = status_lite(wp) | {"generations": [], "shared": False}
        return self._send(200, body)

    def do_PUT(self) -> None:  # noqa: N802
        if self.path.startswith("/r2/"):
            length = int(self.headers.get("Content-Length") or 0)
            BLOBS[self.path[len("/r2/"):].split("?")[0]] = self.rfile.read(length)
            return self._send(201 if ARGS.quirk == "put-201" else 200, b"", "text/plain")
        return self._send(404, {"message": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        body = self._json()
        if path == "/api/v2/generate/async":
            if not self._authorized():
                return None
            wp_id = str(uuid.uuid4())
            params = body.get("params") or {}
            REQUESTS[wp_id] = {
                "prompt": body["prompt"], "params": params, "r2": body.get("r2", True),
                "models": body.get("models") or ["stable_diffusion"], "job_id": None, "generation": None,
                "seed": random.randint(0, 2**32 - 1), "worker_name": None,
            }
            return self._send(202, {"id": wp_id, "kudos": 4.0})
        if path == "/api/v2/generate/pop":
            if not self._authorized():
                return None
            wp_id = next((k for k, v in REQUESTS.items() if v["job_id"] is None), None)
            skipped: dict[str, Any] = {}
            if ARGS.quirk == "nulls-in-skipped":
                skipped = {"max_pixels": None, "models": None}
            empty_payload = {"ddim_steps": 30, "n_iter": 1, "sampler_name": "k_euler_a", "cfg_scale": 7.5,
                             "height": 512, "width": 512, "karras": False, "tiling": False, "hires_fix": False,
                             "image_is_control": False, "return_control_map": False}
            if wp_id is None:
                return self._send(200, {"payload": empty_payload, "id": None, "ids": [], "skipped": skipped,
                                        "model": None, "source_image": None, "source_processing": "img2img",
                                        "source_mask": None, "r2_upload": None, "r2_uploads": None, "ttl": None,
                                        "extra_source_images": None, "messages": []})
            wp = REQUESTS[wp_id]
            job_id = str(uuid.uuid4())
            wp["job_id"], wp["worker_name"] = job_id, body["name"]
            JOBS[job_id] = wp_id
            p = wp["params"]
            payload = {
                "sampler_name": p.get("sampler_name", "k_euler_a"), "cfg_scale": p.get("cfg_scale", 5.0),
                "seed": wp["seed"] if ARGS.quirk == "int-seed" else str(wp["seed"]),
                "height": p.get("height", 512), "width": p.get("width", 512), "post_processing": [],
                "karras": p.get("karras", True), "tiling": False, "hires_fix": False, "image_is_control": False,
                "return_control_map": False, "prompt": wp["prompt"], "ddim_steps": p.get("steps", 30),
                "n_iter": 1, "use_nsfw_censor": False, "batch_size": 1,
            }
            upload = f"http://{self.headers.get('Host')}/r2/{job_id}?X-Amz-Signature=fake"
            return self._send(200, {
                "payload": payload, "id": None if ARGS.quirk == "no-id" else job_id, "ids": [job_id],
                "skipped": skipped, "model": "stable_diffusion", "source_image": None,
                "source_processing": "img2img", "source_mask": None, "r2_upload": upload, "r2_uploads": [upload],
                "ttl": 150, "extra_source_images": None, "messages": [],
            })
        if path == "/api/v2/generate/submit":
            if not self._authorized():
                return None
            wp_id = JOBS.get(body.get("id", ""))
            if wp_id is None:
                return self._send(404, {"message": f"Processing Job with ID {body.get('id')} does not exist.",
                                        "rc": "InvalidJobID"})
            wp = REQUESTS[wp_id]
            if wp["generation"] is not None:
                return self._send(400, {"message": "Procgen with ID already submitted", "rc": "DuplicateGen"})
            if body.get("state") == "faulted":
                wp["job_id"] = None
                return self._send(200, {"reward": 0})
            generation = body["generation"]
            if generation == "R2":
                if body["id"] not in BLOBS:
                    return self._send(400, {"message": "no upload found", "rc": "ImageValidationFailed"})
            else:
                BLOBS[body["id"]] = base64.b64decode(generation)
            wp["generation"] = generation
            wp["seed"] = int(body["seed"])
            return self._send(200, {"reward": 4.26})
        return self._send(404, {"message": "Not Found"})


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7398)
    parser.add_argument("--apikey", required=True)
    parser.add_argument("--quirk", choices=["int-seed", "put-201", "no-id", "nulls-in-skipped"])
    parser.add_argument("--verbose", action="store_true")
    ARGS = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
