#!/usr/bin/env python3
"""Offline: feed response bodies shaped like AI Horde's (and some plausible server mistakes) to horde-sdk's
response models and check which ones it accepts. No server needed.

    <venv>/bin/python check_shapes.py        # exit 0 when every case behaved as recorded below

Each case says whether horde-sdk (pinned in setup.sh) must ACCEPT or REJECT the body. "Reject" cases are
the shapes our server must never produce; they document horde-sdk's expectations precisely.
Runs the models in the default, non-strict mode (TESTS_ONGOING unset), as real users do.
"""

from __future__ import annotations

import copy
import os
import sys

os.environ.pop("TESTS_ONGOING", None)
os.environ.setdefault("LOGURU_LEVEL", "CRITICAL")

import requests  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from horde_sdk.ai_horde_api.apimodels import (  # noqa: E402
    AIHordeHeartbeatResponse,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckResponse,
    ImageGenerateJobPopResponse,
    ImageGenerateStatusResponse,
    JobSubmitResponse,
    UserDetailsResponse,
)
from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient  # noqa: E402
from horde_sdk.exceptions import PayloadValidationError  # noqa: E402
from horde_sdk.generic_api.apimodels import RequestErrorResponse  # noqa: E402

UUID_A = "6f1c2a4e-8d0b-4c39-9a57-0e2b7d3f5a11"
UUID_B = "0b7e5c2d-1a3f-4e6b-8c9d-2f4a6b8c0d13"
UUID_V7 = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"

HEARTBEAT = {"message": "OK", "version": "5.1.5", "queue": 0, "threads": 8, "active_count": 1, "db_connection": True}
USER = {
    "username": "sdk#1", "id": 1, "kudos": 10000.0,
    "kudos_details": {"accumulated": 0, "gifted": 0, "donated": 0, "admin": 10000, "received": 0, "recurring": 0,
                      "awarded": 0, "styled": 0},
    "usage": {}, "contributions": {},
    "records": {"usage": {"megapixelsteps": 0, "tokens": 0}, "contribution": {"megapixelsteps": 0, "tokens": 0},
                "fulfillment": {"image": 0, "text": 0, "interrogation": 0},
                "request": {"image": 0, "text": 0, "interrogation": 0}, "style": {"image": 0, "text": 0}},
    "concurrency": 30, "worker_invited": 0, "moderator": False, "trusted": True, "flagged": False,
    "pseudonymous": False, "worker_count": 0, "account_age": 120, "service": False, "deleted": False,
    "education": False, "customizer": False, "styles": [], "sharedkey_ids": [], "contact": None, "vpn": False,
    "special": False, "active_generations": {"image": [UUID_A], "text": [], "alchemy": []},
}
ASYNC = {"id": UUID_A, "kudos": 4.0, "message": "", "warnings": [{"code": "NoAvailableWorker", "message": "No worker"}]}
CHECK = {"finished": 0, "processing": 1, "restarted": 0, "waiting": 0, "done": False, "faulted": False,
         "wait_time": 12, "queue_position": 0, "kudos": 1.0, "is_possible": True}
POP = {
    "payload": {"sampler_name": "k_euler", "cfg_scale": 5.0, "seed": "3141592653", "height": 512, "width": 512,
                "post_processing": [], "karras": True, "tiling": False, "hires_fix": False, "image_is_control": False,
                "return_control_map": False, "prompt": "a lighthouse at dusk ### blurry", "ddim_steps": 10,
                "n_iter": 1, "use_nsfw_censor": False, "batch_size": 1},
    "id": UUID_B, "ids": [UUID_B], "skipped": {}, "model": "stable_diffusion", "source_image": None,
    "source_processing": "img2img", "source_mask": None, "r2_upload": "https://r2.example/put?sig=1",
    "r2_uploads": ["https://r2.example/put?sig=1"], "ttl": 150, "extra_source_images": None, "messages": [],
}
EMPTY_POP = {
    "payload": {"ddim_steps": 30, "n_iter": 1, "sampler_name": "k_euler_a", "cfg_scale": 7.5, "height": 512,
                "width": 512, "karras": False, "tiling": False, "hires_fix": False},
    "id": None, "ids": [], "skipped": {"models": 2, "max_pixels": 1, "some_future_reason": 3}, "model": None,
    "source_image": None, "source_processing": "img2img", "source_mask": None, "r2_upload": None, "ttl": None,
    "messages": [],
}
STATUS = CHECK | {"finished": 1, "processing": 0, "done": True, "wait_time": 0, "kudos": 5.0, "shared": False,
                  "generations": [{"img": "https://r2.example/get?sig=2", "seed": "3141592653", "worker_id": UUID_A,
                                   "worker_name": "sdk-compat-worker", "model": "stable_diffusion", "id": UUID_B,
                                   "censored": False, "gen_metadata": [], "state": "ok"}]}


def with_change(body: dict, path: str, value: object = "__delete__") -> dict:
    """Copy `body` with the dotted `path` set to `value` (or deleted)."""
    out = copy.deepcopy(body)
    parts = path.split(".")
    target = out
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value == "__delete__":
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return out


ACCEPT, REJECT = True, False
CASES: list[tuple[str, type, dict, bool]] = [
    ("heartbeat as AI Horde", AIHordeHeartbeatResponse, HEARTBEAT, ACCEPT),
    ("heartbeat without version", AIHordeHeartbeatResponse, with_change(HEARTBEAT, "version"), REJECT),
    ("find_user as AI Horde (privilege 1)", UserDetailsResponse, USER, ACCEPT),
    ("find_user minimal {}", UserDetailsResponse, {}, ACCEPT),
    ("find_user id as string '1'", UserDetailsResponse, with_change(USER, "id", "1"), ACCEPT),
    ("find_user id as 'sdk#1'", UserDetailsResponse, with_change(USER, "id", "sdk#1"), REJECT),
    ("find_user active_generations with non-UUID", UserDetailsResponse,
     with_change(USER, "active_generations.image", ["42"]), REJECT),
    ("find_user monthly_kudos.last_received RFC-822 (privilege 2)", UserDetailsResponse,
     USER | {"monthly_kudos": {"amount": 0, "last_received": "Thu, 06 Aug 2026 12:00:00 -0000"}}, REJECT),
    ("find_user monthly_kudos.last_received ISO-8601", UserDetailsResponse,
     USER | {"monthly_kudos": {"amount": 0, "last_received": "2026-08-06T12:00:00Z"}}, ACCEPT),
    ("async 202 as AI Horde", ImageGenerateAsyncResponse, ASYNC, ACCEPT),
    ("async with UUIDv7 id (kept as is)", ImageGenerateAsyncResponse, with_change(ASYNC, "id", UUID_V7), ACCEPT),
    ("async with unknown warning code", ImageGenerateAsyncResponse,
     with_change(ASYNC, "warnings", [{"code": "ModelFallback", "message": "used another model"}]), ACCEPT),
    ("async without kudos", ImageGenerateAsyncResponse, with_change(ASYNC, "kudos"), REJECT),
    ("async with non-UUID id", ImageGenerateAsyncResponse, with_change(ASYNC, "id", "12345"), REJECT),
    ("async warning with empty message", ImageGenerateAsyncResponse,
     with_change(ASYNC, "warnings", [{"code": "X", "message": ""}]), REJECT),
    ("check as AI Horde", ImageGenerateCheckResponse, CHECK, ACCEPT),
    ("check wait_time 12.0 (integral float)", ImageGenerateCheckResponse, with_change(CHECK, "wait_time", 12.0), ACCEPT),
    ("check wait_time 12.5", ImageGenerateCheckResponse, with_change(CHECK, "wait_time", 12.5), REJECT),
    ("check without queue_position", ImageGenerateCheckResponse, with_change(CHECK, "queue_position"), REJECT),
    ("check without is_possible/faulted (defaults)", ImageGenerateCheckResponse,
     with_change(with_change(CHECK, "is_possible"), "faulted"), ACCEPT),
    ("pop with a job as AI Horde", ImageGenerateJobPopResponse, POP, ACCEPT),
    ("pop with integer seed", ImageGenerateJobPopResponse, with_change(POP, "payload.seed", 3141592653), REJECT),
    ("pop with steps/n instead of ddim_steps/n_iter", ImageGenerateJobPopResponse,
     with_change(with_change(POP, "payload", POP["payload"] | {"steps": 10, "n": 1}), "payload.ddim_steps"), ACCEPT),
    ("pop with a job but id null (SDK accepts; reGen sees 'no job')", ImageGenerateJobPopResponse,
     with_change(POP, "id", None), ACCEPT),
    ("pop with model but no id and no ids", ImageGenerateJobPopResponse,
     with_change(with_change(POP, "id", None), "ids", []), REJECT),
    ("pop without payload", ImageGenerateJobPopResponse, with_change(POP, "payload"), REJECT),
    ("pop without ids", ImageGenerateJobPopResponse, with_change(POP, "ids"), REJECT),
    ("pop skipped with null counts", ImageGenerateJobPopResponse,
     with_change(POP, "skipped", {"max_pixels": None}), REJECT),
    ("pop source_processing 'txt2img'", ImageGenerateJobPopResponse,
     with_change(POP, "source_processing", "txt2img"), ACCEPT),
    ("empty pop as AI Horde", ImageGenerateJobPopResponse, EMPTY_POP, ACCEPT),
    ("empty pop with payload null", ImageGenerateJobPopResponse, with_change(EMPTY_POP, "payload", None), REJECT),
    ("empty pop with payload {}", ImageGenerateJobPopResponse, with_change(EMPTY_POP, "payload", {}), ACCEPT),
    ("submit as AI Horde", JobSubmitResponse, {"reward": 4.26}, ACCEPT),
    ("submit reward int", JobSubmitResponse, {"reward": 4}, ACCEPT),
    ("submit without reward", JobSubmitResponse, {}, REJECT),
    ("status as AI Horde (r2 URL)", ImageGenerateStatusResponse, STATUS, ACCEPT),
    ("status with integer seed", ImageGenerateStatusResponse,
     with_change(STATUS, "generations.0.seed", 3141592653), REJECT),
    ("status with img null", ImageGenerateStatusResponse, with_change(STATUS, "generations.0.img", None), REJECT),
    ("status without censored", ImageGenerateStatusResponse, with_change(STATUS, "generations.0.censored"), REJECT),
    ("status with unknown state", ImageGenerateStatusResponse,
     with_change(STATUS, "generations.0.state", "finished"), REJECT),
    ("status gen_metadata null", ImageGenerateStatusResponse,
     with_change(STATUS, "generations.0.gen_metadata", None), ACCEPT),
    ("status worker_id any string", ImageGenerateStatusResponse,
     with_change(STATUS, "generations.0.worker_id", "not-a-uuid"), ACCEPT),
    ("status without generations/shared (defaults)", ImageGenerateStatusResponse, CHECK, ACCEPT),
]


class _FakeResponse:
    """Stands in for requests.Response so the error path of the SDK's client can be exercised offline."""

    def __init__(self, status: int, text: str) -> None:
        self.status_code = status
        self.text = text

    def json(self) -> object:
        return requests.models.complexjson.loads(self.text)


def error_path_cases() -> list[str]:
    """What the SDK's manual client turns error bodies into (4xx/5xx handling in _after_request_handling)."""
    failures: list[str] = []
    client = AIHordeAPIManualClient()

    def handle(body: dict) -> object:
        return client._after_request_handling(raw_response_json=body, returned_status_code=400,
                                              expected_response_type=JobSubmitResponse)

    result = handle({"message": "Procgen with ID already submitted", "rc": "DuplicateGen"})
    if not (isinstance(result, RequestErrorResponse) and result.rc == "DuplicateGen"):
        failures.append(f"error body {{message, rc}} -> {result!r}")
    result = handle({"message": "2 per 1 second"})
    if not (isinstance(result, RequestErrorResponse) and result.rc == "RC_MISSING"):
        failures.append(f"error body {{message}} -> {result!r}")
    try:
        handle({"message": "Input payload validation failed", "errors": {"prompt": "too short"}})
        failures.append("error body with 'errors' did not raise PayloadValidationError")
    except PayloadValidationError:
        pass
    # `message` is not actually required: it defaults to "" (ContainsMessageResponseMixin).
    result = handle({"error": "no message key"})
    if not (isinstance(result, RequestErrorResponse) and result.message == "" and result.rc == "RC_MISSING"):
        failures.append(f"error body without message -> {result!r}")
    # A non-JSON body (e.g. a framework's plain-text rejection) is not handled by the SDK at all:
    # requests' .json() raises before the SDK looks at the status code.
    try:
        _FakeResponse(422, "Failed to deserialize the JSON body").json()
        failures.append("plain-text body parsed as JSON?")
    except ValueError:
        pass
    return failures


def main() -> int:
    failures: list[str] = []
    for title, model, body, should_accept in CASES:
        try:
            model.model_validate(body)
            accepted, why = True, ""
        except ValidationError as e:
            accepted, why = False, "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        verdict = "accept" if accepted else "reject"
        mark = "ok " if accepted == should_accept else "BAD"
        print(f"{mark} {verdict:6} {title}{'  [' + why + ']' if why else ''}")
        if accepted != should_accept:
            failures.append(title)
    for failure in error_path_cases():
        print(f"BAD {failure}")
        failures.append(failure)
    print(f"\n{len(CASES)} body cases + error-path cases; {len(failures)} unexpected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
