#!/usr/bin/env python3
"""Every endpoint our coordinator serves, answered by the server and parsed by horde-sdk's own
response models, in the SDK's normal mode or (`--strict`) its strict mode.

Usage:
    python endpoints.py --url http://127.0.0.1:PORT [--strict]

The server must run with test users enabled (`HORDE_TEST_APIKEYS=1`): the script makes a
moderator and a plain user through `POST /api/v2/dev/test-user`, then drives every operation
we serve (image requests, pops, submits, workers, users, kudos, shared keys, filters, status and
statistics, error answers) with plain `requests`, and hands each JSON answer to the response
model horde-sdk uses for that endpoint (`Model.model_validate`).

Strictness: horde-sdk's models take `extra="forbid"` when `TESTS_ONGOING` is set at import
time, which is what `--strict` does. A field the SDK does not model then fails the parse. The
only such fields tolerated are listed in `NOT_IN_THE_SDK` below, each with its reason: our
documented additions (ARCHITECTURE.md, "Beyond the public horde"). Every other validation
error fails.

Beyond parsing, the script checks the answers real clients rely on (issue 20): a worker's `team`
is an object, `GET /workers?type=` lists every worker, `find_user` with an unknown key is 404
`UserNotFound`, a moderator's view of a user carries the privileged fields, the first empty pop
counts every skip reason at 0, and a cancelled untouched request is not done.

Exit status 0 when everything parsed and every check held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
import uuid
from typing import Any

ARGS_PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ARGS_PARSER.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:7001")
ARGS_PARSER.add_argument("--strict", action="store_true", help="horde-sdk's strict mode (TESTS_ONGOING=1)")
ARGS = ARGS_PARSER.parse_args()

# Read by horde-sdk when it is imported.
os.environ.pop("TESTS_ONGOING", None)
if ARGS.strict:
    os.environ["TESTS_ONGOING"] = "1"
os.environ["AI_HORDE_URL"] = ARGS.url.rstrip("/") + "/api/"
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")
for _var in ("AI_HORDE_DEV_URL", "AI_HORDE_DEV_APIKEY", "HORDE_SDK_TELEMETRY"):
    os.environ.pop(_var, None)

import PIL.Image  # noqa: E402
import requests  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient  # noqa: E402
from horde_sdk.ai_horde_api.apimodels import (  # noqa: E402
    AIHordeHeartbeatResponse,
    AllWorkersDetailsRequest,
    AllWorkersDetailsResponse,
    DeleteFilterResponse,
    ExpiryStrSharedKeyDetailsResponse,
    FilterDetails,
    FilterPromptSuspicionResponse,
    FilterRegexResponse,
    FiltersListResponse,
    HordePerformanceResponse,
    HordeStatusModelsAllResponse,
    HordeStatusModelsSingleResponse,
    ImageGenerateAsyncDryRunResponse,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckResponse,
    ImageGenerateJobPopResponse,
    ImageGenerateStatusResponse,
    ImageStatsModelsResponse,
    ImageStatsModelsTotalResponse,
    JobSubmitResponse,
    KudosTransferResponse,
    ModifyUserResponse,
    ModifyWorkerResponse,
    SharedKeyDeleteResponse,
    SingleWorkerDetailsResponse,
    TextGenerateAsyncDryRunResponse,
    TextGenerateAsyncResponse,
    TextGenerateJobPopResponse,
    TextGenerateStatusResponse,
    TextStatsModelResponse,
    TextStatsModelsTotalResponse,
    UserDetailsResponse,
)
from horde_sdk.generic_api.apimodels import RequestErrorResponse  # noqa: E402

# Fields the SDK's models do not have, tolerated in strict mode, by the path of the field in the
# answer (list indices left out), with the reason. Nothing else may be extra.
NOT_IN_THE_SDK: dict[str, str] = {
    # Ours, documented in ARCHITECTURE.md ("Beyond the public horde").
    "reputation": "ours: the worker's reputation ledger on /workers",
    "warnings": "ours: ModelFallback warnings on check and status",
}

FAILURES: list[str] = []
TOLERATED: set[str] = set()
CHECKED: list[str] = []


def fail(what: str) -> None:
    FAILURES.append(what)
    print(f"FAIL {what}")


def expect(condition: bool, what: str) -> None:
    if condition:
        print(f"ok   {what}")
    else:
        fail(what)


def field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int))


def parse(title: str, model: type, body: Any) -> Any:
    """`body` through `model`; in strict mode, extra fields listed in NOT_IN_THE_SDK pass."""
    CHECKED.append(title)
    try:
        return model.model_validate(body)
    except ValidationError as error:
        real = []
        for err in error.errors():
            path = field_path(err["loc"])
            last = path.rsplit(".", 1)[-1]
            if err["type"] == "extra_forbidden" and last in NOT_IN_THE_SDK:
                TOLERATED.add(f"{model.__name__}.{path}")
            else:
                real.append(f"{path or '<root>'}: {err['msg']} ({err['type']})")
        if real:
            fail(f"{title}: {model.__name__} refused the answer: " + "; ".join(real))
            return None
        print(f"ok   {title} ({model.__name__}, tolerated extras only)")
        return body


class Api:
    """Plain HTTP to the server; every answer is parsed by a horde-sdk model by the caller."""

    def __init__(self, url: str) -> None:
        self.base = url.rstrip("/") + "/api/v2"
        self.session = requests.Session()

    def call(self, method: str, path: str, key: str | None = None, expect_status: int | None = None,
             **kwargs: Any) -> Any:
        headers = {"Client-Agent": "horde-sdk-endpoints:1:compat"}
        if key is not None:
            headers["apikey"] = key
        response = self.session.request(method, self.base + path, headers=headers, timeout=30, **kwargs)
        if expect_status is not None and response.status_code != expect_status:
            fail(f"{method} {path}: status {response.status_code}, expected {expect_status}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            fail(f"{method} {path}: answer is not JSON (status {response.status_code}): {response.text[:200]!r}")
            return None


def webp_base64(size: int) -> str:
    image = PIL.Image.new("RGB", (size, size), (200, 80, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=80)
    return base64.b64encode(buffer.getvalue()).decode()


def test_user(api: Api, name: str, moderator: bool, trusted: bool, kudos: float) -> dict:
    body = {"username": name, "moderator": moderator, "trusted": trusted, "kudos": kudos}
    answer = api.call("POST", "/dev/test-user", json=body)
    if not answer or "api_key" not in answer:
        print(f"cannot create test user {name}: {answer}")
        sys.exit(1)
    return answer


WORKER = "sdk-endpoints-" + ("strict" if ARGS.strict else "normal")
POP = {"name": WORKER, "models": ["stable_diffusion"], "bridge_agent": "AI Horde Worker reGen:9.0.1:https://example.invalid",
       "max_pixels": 262144, "amount": 1}
REQUEST = {"prompt": "a lighthouse at dusk ### blurry", "models": ["stable_diffusion"], "r2": False,
           "params": {"width": 256, "height": 256, "steps": 10, "sampler_name": "k_euler", "cfg_scale": 4.1, "n": 1}}


def status_and_stats(api: Api) -> None:
    parse("GET /status/heartbeat", AIHordeHeartbeatResponse, api.call("GET", "/status/heartbeat", expect_status=200))
    parse("GET /status/models", HordeStatusModelsAllResponse, api.call("GET", "/status/models", expect_status=200))
    parse("GET /status/models/{name}", HordeStatusModelsSingleResponse,
          api.call("GET", "/status/models/stable_diffusion", expect_status=200))
    parse("GET /status/performance", HordePerformanceResponse, api.call("GET", "/status/performance", expect_status=200))
    parse("GET /stats/img/totals", ImageStatsModelsTotalResponse, api.call("GET", "/stats/img/totals", expect_status=200))
    parse("GET /stats/img/models", ImageStatsModelsResponse, api.call("GET", "/stats/img/models", expect_status=200))


def users(api: Api, mod: dict, plain: dict) -> None:
    parse("GET /find_user (moderator)", UserDetailsResponse, api.call("GET", "/find_user", mod["api_key"], 200))
    parse("GET /find_user (user)", UserDetailsResponse, api.call("GET", "/find_user", plain["api_key"], 200))
    unknown = api.call("GET", "/find_user", "x" * 22, 404)
    error = parse("GET /find_user (unknown key)", RequestErrorResponse, unknown)
    expect(error is not None and unknown.get("rc") == "UserNotFound", "find_user with an unknown key is 404 UserNotFound")
    uid = plain["user_id"]
    parse("GET /users/{id} (anonymous)", UserDetailsResponse, api.call("GET", f"/users/{uid}", None, 200))
    parse("GET /users/{id} (self)", UserDetailsResponse, api.call("GET", f"/users/{uid}", plain["api_key"], 200))
    seen = api.call("GET", f"/users/{uid}", mod["api_key"], 200)
    parse("GET /users/{id} (moderator)", UserDetailsResponse, seen)
    privileged = ["evaluating_kudos", "monthly_kudos", "suspicious", "sharedkey_ids", "contact", "active_generations"]
    missing = [f for f in privileged if f not in (seen or {})]
    expect(not missing, f"a moderator's view of a user carries {privileged} (missing: {missing})")
    parse("PUT /users/{id}", ModifyUserResponse,
          api.call("PUT", f"/users/{uid}", mod["api_key"], 200, json={"concurrency": 25}))
    transferred = api.call("POST", "/kudos/transfer", mod["api_key"], 200,
                           json={"username": plain["alias"], "amount": 5})
    parse("POST /kudos/transfer", KudosTransferResponse, transferred)


def image_lifecycle(api: Api, mod: dict, plain: dict) -> None:
    empty = api.call("POST", "/generate/pop", mod["api_key"], 200, json=POP)
    parse("POST /generate/pop (empty, first)", ImageGenerateJobPopResponse, empty)
    skipped = (empty or {}).get("skipped", {})
    expect(bool(skipped) and all(v == 0 for v in skipped.values()),
           f"the first empty pop counts every skip reason at 0 ({skipped})")

    dry = api.call("POST", "/generate/async", plain["api_key"], 200, json=REQUEST | {"dry_run": True})
    parse("POST /generate/async (dry run)", ImageGenerateAsyncDryRunResponse, dry)
    accepted = api.call("POST", "/generate/async", plain["api_key"], 202, json=REQUEST)
    parse("POST /generate/async", ImageGenerateAsyncResponse, accepted)
    request_id = accepted["id"]
    parse("GET /generate/check/{id} (waiting)", ImageGenerateCheckResponse,
          api.call("GET", f"/generate/check/{request_id}", None, 200))
    seen = api.call("GET", f"/users/{plain['user_id']}", mod["api_key"], 200)
    active = (seen or {}).get("active_generations", {})
    expect(active == {"image": [request_id]}, f"active_generations names image requests only ({active})")

    job = api.call("POST", "/generate/pop", mod["api_key"], 200, json=POP)
    popped = parse("POST /generate/pop (a job)", ImageGenerateJobPopResponse, job)
    expect(popped is not None and job.get("id") is not None, "the pop hands out the request")
    expect("r2_upload" in (job or {}), "the pop carries r2_upload even for an r2=false request")
    submit = {"id": job["id"], "generation": webp_base64(256), "state": "ok", "seed": int(job["payload"]["seed"])}
    parse("POST /generate/submit", JobSubmitResponse, api.call("POST", "/generate/submit", mod["api_key"], 200, json=submit))
    parse("GET /generate/check/{id} (done)", ImageGenerateCheckResponse,
          api.call("GET", f"/generate/check/{request_id}", None, 200))
    parse("GET /generate/status/{id}", ImageGenerateStatusResponse,
          api.call("GET", f"/generate/status/{request_id}", None, 200))

    time.sleep(1.1)  # the public horde's limit: 2 requests a second per key
    untouched = api.call("POST", "/generate/async", plain["api_key"], 202, json=REQUEST)
    cancelled = api.call("DELETE", f"/generate/status/{untouched['id']}", None, 200)
    parse("DELETE /generate/status/{id}", ImageGenerateStatusResponse, cancelled)
    expect(cancelled is not None and cancelled.get("done") is False, "DELETE of an untouched request answers done: false")

    missing = api.call("GET", f"/generate/check/{uuid.uuid4()}", None, 404)
    parse("GET /generate/check/{unknown} (404)", RequestErrorResponse, missing)


TEXT_MODEL = "koboldcpp/Marx-3B-V3"
TEXT_POP = {"name": WORKER + "-text", "models": [TEXT_MODEL], "max_length": 512, "max_context_length": 2048,
            "bridge_agent": "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"}
TEXT_REQUEST = {"prompt": "The keeper opened the door and", "models": [TEXT_MODEL],
                "params": {"max_length": 64, "max_context_length": 1024, "temperature": 0.7}}


def text_lifecycle(api: Api, mod: dict, plain: dict) -> None:
    empty = api.call("POST", "/generate/text/pop", mod["api_key"], 200, json=TEXT_POP)
    parse("POST /generate/text/pop (empty)", TextGenerateJobPopResponse, empty)
    dry = api.call("POST", "/generate/text/async", plain["api_key"], 200, json=TEXT_REQUEST | {"dry_run": True})
    parse("POST /generate/text/async (dry run)", TextGenerateAsyncDryRunResponse, dry)
    accepted = api.call("POST", "/generate/text/async", plain["api_key"], 202, json=TEXT_REQUEST)
    parse("POST /generate/text/async", TextGenerateAsyncResponse, accepted)
    request_id = accepted["id"]
    parse("GET /generate/text/status/{id} (waiting)", TextGenerateStatusResponse,
          api.call("GET", f"/generate/text/status/{request_id}", None, 200))
    job = api.call("POST", "/generate/text/pop", mod["api_key"], 200, json=TEXT_POP)
    parse("POST /generate/text/pop (a job)", TextGenerateJobPopResponse, job)
    expect(job is not None and job.get("id") is not None, "the text pop hands out the request")
    submit = {"id": job["id"], "generation": " saw the sea.", "state": "ok"}
    parse("POST /generate/text/submit", JobSubmitResponse,
          api.call("POST", "/generate/text/submit", mod["api_key"], 200, json=submit))
    parse("GET /generate/text/status/{id} (done)", TextGenerateStatusResponse,
          api.call("GET", f"/generate/text/status/{request_id}", None, 200))
    time.sleep(1.1)  # 2 requests a second per key
    untouched = api.call("POST", "/generate/text/async", plain["api_key"], 202, json=TEXT_REQUEST)
    parse("DELETE /generate/text/status/{id}", TextGenerateStatusResponse,
          api.call("DELETE", f"/generate/text/status/{untouched['id']}", None, 200))
    parse("GET /stats/text/totals", TextStatsModelsTotalResponse, api.call("GET", "/stats/text/totals", None, 200))
    parse("GET /stats/text/models", TextStatsModelResponse, api.call("GET", "/stats/text/models", None, 200))
    parse("GET /status/models?type=text", HordeStatusModelsAllResponse, api.call("GET", "/status/models?type=text", None, 200))


def workers(api: Api, mod: dict) -> None:
    if ARGS.strict:
        # The SDK's client parses the whole answer, documented additions included, so in strict
        # mode the same query goes out by hand (horde-sdk sends `type=` for every kind).
        names = [w["name"] for w in api.call("GET", "/workers?type=", None, 200) or []]
    else:
        client = AIHordeAPIManualClient()
        listed = client.submit_request(AllWorkersDetailsRequest(), AllWorkersDetailsResponse)
        if isinstance(listed, RequestErrorResponse):
            fail(f"GET /workers through horde-sdk's client: {listed}")
            return
        names = [w.name for w in listed.root]
    expect(WORKER in names, f"GET /workers?type= (what horde-sdk sends) lists every worker ({names})")
    parse("GET /workers", AllWorkersDetailsResponse, api.call("GET", "/workers", None, 200))
    every = api.call("GET", "/workers?type=all", None, 200)
    expect(WORKER in [w["name"] for w in every or []], "GET /workers?type=all lists every worker")
    by_name = api.call("GET", f"/workers?type=text&name={WORKER}", None, 200)
    expect([w["name"] for w in by_name or []] == [WORKER], "GET /workers: name takes precedence over type")
    worker = next(w for w in every if w["name"] == WORKER)
    one = api.call("GET", f"/workers/{worker['id']}", mod["api_key"], 200)
    parse("GET /workers/{id} (moderator)", SingleWorkerDetailsResponse, one)
    parse("GET /workers/{id}", SingleWorkerDetailsResponse, api.call("GET", f"/workers/{worker['id']}", None, 200))
    expect(isinstance((one or {}).get("team"), dict), f"a worker's team is an object ({(one or {}).get('team')!r})")
    parse("GET /workers/name/{name}", SingleWorkerDetailsResponse, api.call("GET", f"/workers/name/{WORKER}", None, 200))
    parse("PUT /workers/{id}", ModifyWorkerResponse,
          api.call("PUT", f"/workers/{worker['id']}", mod["api_key"], 200, json={"info": "an sdk test worker"}))


def shared_keys(api: Api, plain: dict) -> None:
    created = api.call("PUT", "/sharedkeys", plain["api_key"], 200, json={"name": "sdk key", "kudos": 500})
    parse("PUT /sharedkeys", ExpiryStrSharedKeyDetailsResponse, created)
    key_id = created["id"]
    parse("GET /sharedkeys/{id}", ExpiryStrSharedKeyDetailsResponse, api.call("GET", f"/sharedkeys/{key_id}", None, 200))
    parse("PATCH /sharedkeys/{id}", ExpiryStrSharedKeyDetailsResponse,
          api.call("PATCH", f"/sharedkeys/{key_id}", plain["api_key"], 200, json={"kudos": 400}))
    parse("DELETE /sharedkeys/{id}", SharedKeyDeleteResponse,
          api.call("DELETE", f"/sharedkeys/{key_id}", plain["api_key"], 200))


def filters(api: Api, mod: dict) -> None:
    added = api.call("PUT", "/filters", mod["api_key"], 200,
                     json={"regex": "forbidden_word", "filter_type": 10, "description": "sdk test"})
    parse("PUT /filters", FilterDetails, added)
    filter_id = added["id"]
    parse("GET /filters", FiltersListResponse, api.call("GET", "/filters", mod["api_key"], 200))
    parse("POST /filters", FilterPromptSuspicionResponse,
          api.call("POST", "/filters", mod["api_key"], 200, json={"prompt": "a forbidden_word", "filter_type": 10}))
    parse("GET /filters/regex", FilterRegexResponse, api.call("GET", "/filters/regex", mod["api_key"], 200))
    parse("GET /filters/{id}", FilterDetails, api.call("GET", f"/filters/{filter_id}", mod["api_key"], 200))
    parse("PATCH /filters/{id}", FilterDetails,
          api.call("PATCH", f"/filters/{filter_id}", mod["api_key"], 200, json={"description": "sdk test 2"}))
    parse("DELETE /filters/{id}", DeleteFilterResponse, api.call("DELETE", f"/filters/{filter_id}", mod["api_key"], 200))


def main() -> int:
    api = Api(ARGS.url)
    suffix = "strict" if ARGS.strict else "normal"
    mod = test_user(api, f"sdkmod{suffix}", True, True, 10_000)
    plain = test_user(api, f"sdkuser{suffix}", False, False, 100)
    status_and_stats(api)
    image_lifecycle(api, mod, plain)
    text_lifecycle(api, mod, plain)
    users(api, mod, plain)
    workers(api, mod)
    shared_keys(api, plain)
    filters(api, mod)
    mode = "strict (TESTS_ONGOING=1, unknown fields forbidden)" if ARGS.strict else "normal"
    for extra in sorted(TOLERATED):
        print(f"note tolerated extra field {extra}: {NOT_IN_THE_SDK[extra.rsplit('.', 1)[-1]]}")
    print(f"{len(CHECKED)} answers parsed by horde-sdk in {mode} mode; {len(FAILURES)} failures")
    if FAILURES:
        return 1
    print(f"PASSED: every endpoint parsed by horde-sdk in {suffix} mode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
