#!/usr/bin/env python3
"""Drive one full image request through the real `horde-sdk` (PyPI) against a horde coordinator.

Usage:
    python roundtrip.py --url http://127.0.0.1:PORT --apikey KEY [--r2] [--timeout 30] [--verbose]

KEY is the 22-character API key of a registered (trusted) user; the same user acts as the
requester and as the owner of the worker "sdk-compat-worker".

Every request is built from horde-sdk's request models and sent through its own client classes
(`AIHordeAPIManualClient.submit_request`, `AIHordeAPISimpleClient.heartbeat_request` and
`.download_image_from_generation`), and every response is parsed by horde-sdk's response models,
so a field our server names, types or omits differently from AI Horde shows up here exactly as it
would for a real horde-sdk user. Only two things bypass the SDK, on purpose, because the reference
worker (horde-worker-reGen) does them outside the SDK too: the R2 upload (plain `requests.put` of
the WebP bytes to the pop's `r2_upload` URL) and the WebP encoding with Pillow.

Model strictness: horde-sdk's models use pydantic `extra="allow"` unless the environment variable
`TESTS_ONGOING` is set, which switches them to `extra="forbid"`. We deliberately run in the
default, non-strict mode (and unset TESTS_ONGOING before importing the SDK), because that is what
real users run, and because strict mode rejects even the public AI Horde (e.g. its heartbeat
carries `queue`/`threads`/... that the SDK does not model). Instead, fields the SDK does not know
are collected from each parsed model (`model_extra`) and listed as informational notes at the end.

Exit status: 0 when every step passed, 1 on the first failure (what failed is printed, with the
raw HTTP exchange when the server answered something the SDK could not parse), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

WORKER_NAME = "sdk-compat-worker"
BRIDGE_AGENT = "AI Horde Worker reGen:9.0.1:https://example.invalid"
PROMPT = "a lighthouse at dusk ### blurry"
MODEL = "stable_diffusion"
SIZE = 512
STEPS = 10
SAMPLER = "k_euler"
MAX_PIXELS = 262144

# Colours of the four quadrants of the test image (top-left, top-right, bottom-left, bottom-right).
QUADRANT_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (240, 240, 240)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:7001 (the SDK base becomes URL/api/)")
    parser.add_argument("--apikey", required=True, help="22-character API key of a registered trusted user")
    parser.add_argument("--r2", action="store_true", help="request r2=true: worker PUTs to r2_upload and submits 'R2'")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the request to be done (default 30)")
    parser.add_argument("--pop-timeout", type=float, default=15.0, help="seconds to keep popping until the job appears (default 15)")
    parser.add_argument("--verbose", action="store_true", help="show horde-sdk's own DEBUG log and every HTTP exchange")
    return parser.parse_args(argv)


def sdk_base_url(url: str) -> str:
    """horde-sdk joins paths like 'v2/generate/async' onto its base with urljoin, so the base must end in '/api/'."""
    url = url.rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    return url + "/api/"


# --------------------------------------------------------------------------------------------
# Environment must be prepared before horde_sdk is imported: the base URL is read at import time
# (horde_sdk.ai_horde_api.endpoints.AI_HORDE_BASE_URL), and so is the strict/non-strict switch.
# --------------------------------------------------------------------------------------------
ARGS = parse_args(sys.argv[1:])
BASE_URL = sdk_base_url(ARGS.url)
os.environ["AI_HORDE_URL"] = BASE_URL
if not ARGS.verbose:
    os.environ.setdefault("LOGURU_LEVEL", "WARNING")  # horde-sdk logs DEBUG lines at import time otherwise
    os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")  # the SDK's logfire spans are unconfigured here
for _var in ("AI_HORDE_DEV_URL", "AI_HORDE_DEV_APIKEY", "TESTS_ONGOING", "HORDE_SDK_TELEMETRY"):
    # AI_HORDE_DEV_URL would override AI_HORDE_URL; AI_HORDE_DEV_APIKEY would override every key.
    os.environ.pop(_var, None)

import PIL.Image  # noqa: E402
import PIL.ImageStat  # noqa: E402
import requests  # noqa: E402
from loguru import logger  # noqa: E402
from pydantic import BaseModel  # noqa: E402

import horde_sdk  # noqa: E402,F401
from horde_sdk.ai_horde_api import endpoints as sdk_endpoints  # noqa: E402
from horde_sdk.ai_horde_api.ai_horde_clients import (  # noqa: E402
    AIHordeAPIManualClient,
    AIHordeAPISimpleClient,
)
from horde_sdk.ai_horde_api.apimodels import (  # noqa: E402
    AIHordeHeartbeatResponse,
    DeleteImageGenerateRequest,
    FindUserRequest,
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerateCheckRequest,
    ImageGenerateCheckResponse,
    ImageGenerateJobPopRequest,
    ImageGenerateJobPopResponse,
    ImageGenerateStatusRequest,
    ImageGenerateStatusResponse,
    ImageGenerationInputPayload,
    ImageGenerationJobSubmitRequest,
    JobSubmitResponse,
    UserDetailsResponse,
)
from horde_sdk.ai_horde_api.consts import GENERATION_STATE  # noqa: E402
from horde_sdk.generic_api.apimodels import RequestErrorResponse  # noqa: E402

if not ARGS.verbose:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")


# --------------------------------------------------------------------------------------------
# Passive record of the HTTP exchanges the SDK makes (it discards the status code and the raw
# body once parsed). requests.get/put/request all end in Session.send; we only observe.
# --------------------------------------------------------------------------------------------
@dataclass
class Exchange:
    method: str
    url: str
    request_headers: dict[str, str]
    request_body: bytes | None
    status: int
    response_headers: Any  # case-insensitive, as HTTP header names are
    response_body: bytes


EXCHANGES: list[Exchange] = []
_original_send = requests.sessions.Session.send


def _recording_send(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
    response = _original_send(self, request, **kwargs)
    body = request.body if isinstance(request.body, bytes) else (request.body.encode() if request.body else None)
    EXCHANGES.append(
        Exchange(
            method=request.method or "?",
            url=request.url or "?",
            request_headers={k: ("<redacted>" if k.lower() == "apikey" else v) for k, v in request.headers.items()},
            request_body=body,
            status=response.status_code,
            response_headers=requests.structures.CaseInsensitiveDict(response.headers),
            response_body=response.content,
        ),
    )
    if ARGS.verbose:
        print(f"      [http] {request.method} {request.url} -> {response.status_code}", flush=True)
    return response


requests.sessions.Session.send = _recording_send  # type: ignore[method-assign]


def _short(data: bytes | None, limit: int = 3000) -> str:
    if data is None:
        return "<none>"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(data)} bytes of binary data, starting {data[:16]!r}>"
    # Do not flood the terminal with base64 images.
    try:
        obj = json.loads(text)
        text = json.dumps(_elide_long_strings(obj), indent=2)
    except ValueError:
        pass
    return text if len(text) <= limit else text[:limit] + f"... <{len(text) - limit} more chars>"


def _elide_long_strings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _elide_long_strings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_elide_long_strings(v) for v in obj]
    if isinstance(obj, str) and len(obj) > 300:
        return obj[:80] + f"...<{len(obj)} chars>"
    return obj


def describe_last_exchange() -> str:
    if not EXCHANGES:
        return "  (no HTTP exchange recorded)"
    ex = EXCHANGES[-1]
    return (
        f"  request : {ex.method} {ex.url}\n"
        f"  headers : {ex.request_headers}\n"
        f"  body    : {_short(ex.request_body)}\n"
        f"  status  : {ex.status}  (Content-Type: {ex.response_headers.get('Content-Type')})\n"
        f"  response: {_short(ex.response_body)}"
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
class CheckFailed(Exception):
    pass


NOTES: list[str] = []


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def ok(msg: str) -> None:
    print(f"   ok  {msg}", flush=True)


def note(msg: str) -> None:
    NOTES.append(msg)
    print(f"   note {msg}", flush=True)


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)
    ok(what)


def collect_extras(obj: Any, path: str = "") -> list[str]:
    """Names of fields the server sent that this SDK version does not model (pydantic extra='allow')."""
    found: list[str] = []
    if isinstance(obj, BaseModel):
        for key in (obj.model_extra or {}):
            found.append(f"{path}.{key}" if path else key)
        for name in type(obj).model_fields:
            found += collect_extras(getattr(obj, name, None), f"{path}.{name}" if path else name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            found += collect_extras(item, f"{path}[{i}]")
    return found


def report_extras(label: str, response: BaseModel) -> None:
    extras = collect_extras(response)
    if extras:
        note(f"{label}: fields not modelled by horde-sdk {horde_sdk_version()} (tolerated): {', '.join(extras)}")


def horde_sdk_version() -> str:
    from importlib.metadata import version

    return version("horde-sdk")


def expect_status(expected: int, label: str) -> None:
    """The SDK ignores the success status code; record deviations from AI Horde's as notes."""
    if EXCHANGES and EXCHANGES[-1].status != expected:
        note(f"{label}: HTTP {EXCHANGES[-1].status}, AI Horde answers {expected}")


CLIENT = AIHordeAPIManualClient()


def call(request: Any, expected_type: type, label: str) -> Any:
    """Send `request` with horde-sdk's manual client and insist on `expected_type` back."""
    try:
        response = CLIENT.submit_request(request, expected_type)
    except requests.exceptions.JSONDecodeError as e:
        raise CheckFailed(f"{label}: response body is not JSON ({e})\n{describe_last_exchange()}") from e
    except Exception as e:  # PayloadValidationError (400 with 'errors'), connection errors, ...
        raise CheckFailed(f"{label}: horde-sdk raised {type(e).__name__}: {e}\n{describe_last_exchange()}") from e
    if isinstance(response, RequestErrorResponse):
        details = ""
        if isinstance(response.object_data, dict) and "exception" in response.object_data:
            details = f"\n  SDK validation error: {response.object_data['exception']}"
        raise CheckFailed(
            f"{label}: {response.message} (rc={response.rc}){details}\n{describe_last_exchange()}",
        )
    if not isinstance(response, expected_type):
        raise CheckFailed(f"{label}: got {type(response).__name__}, expected {expected_type.__name__}")
    content_type = EXCHANGES[-1].response_headers.get("Content-Type", "") if EXCHANGES else ""
    if not content_type.startswith("application/json"):
        # The sync client used here does not care, but horde-sdk's async client (aiohttp's
        # response.json(), used by horde-worker-reGen) raises ContentTypeError on anything else.
        raise CheckFailed(f"{label}: Content-Type {content_type!r}, horde-sdk's async client needs "
                          f"application/json\n{describe_last_exchange()}")
    return response


NOISE_WEIGHT = 0.15


def make_test_webp() -> bytes:
    """A 512x512 picture of four coloured quadrants with noise, encoded like reGen does (WebP, quality 95).

    The noise keeps the file at a realistic size (tens of kB, not a 100-byte solid block) so that
    body-size limits and base64 handling are exercised the way a real worker exercises them.
    """
    base = PIL.Image.new("RGB", (SIZE, SIZE))
    half = SIZE // 2
    for index, colour in enumerate(QUADRANT_COLOURS):
        x, y = (index % 2) * half, (index // 2) * half
        base.paste(colour, (x, y, x + half, y + half))
    noise = PIL.Image.effect_noise((SIZE, SIZE), 64).convert("RGB")
    image = PIL.Image.blend(base, noise, NOISE_WEIGHT)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=95, method=6)
    return buffer.getvalue()


def quadrants_match(image: PIL.Image.Image, tolerance: float = 16.0) -> bool:
    """Mean colour of a 64x64 window in the middle of each quadrant is the colour we drew (after the blend)."""
    rgb = image.convert("RGB")
    quarter = SIZE // 4
    for index, colour in enumerate(QUADRANT_COLOURS):
        cx, cy = (index % 2) * (SIZE // 2) + quarter, (index // 2) * (SIZE // 2) + quarter
        window = rgb.crop((cx - 32, cy - 32, cx + 32, cy + 32))
        mean = PIL.ImageStat.Stat(window).mean
        expected = [c * (1 - NOISE_WEIGHT) + 128 * NOISE_WEIGHT for c in colour]
        if any(abs(a - b) > tolerance for a, b in zip(mean, expected)):
            return False
    return True


# --------------------------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------------------------
@dataclass
class State:
    request_id: str | None = None
    job_id: str | None = None
    submitted: bool = False


def run(state: State) -> None:
    apikey: str = ARGS.apikey
    print(f"horde-sdk {horde_sdk_version()}  base URL {sdk_endpoints.AI_HORDE_BASE_URL}  r2={ARGS.r2}")
    if sdk_endpoints.AI_HORDE_BASE_URL != BASE_URL:
        raise CheckFailed(
            f"horde-sdk picked base URL {sdk_endpoints.AI_HORDE_BASE_URL!r}, not {BASE_URL!r} "
            "(a .env file in the working directory setting AI_HORDE_DEV_URL?)",
        )
    if len(apikey) != 22:
        raise CheckFailed(f"--apikey must be 22 characters (horde-sdk refuses other lengths), got {len(apikey)}")

    # a. heartbeat (through the simple client, as a user would) and find_user ---------------
    step("a. heartbeat + find_user")
    try:
        heartbeat = AIHordeAPISimpleClient().heartbeat_request()
    except Exception as e:
        raise CheckFailed(f"heartbeat: horde-sdk raised {type(e).__name__}: {e}\n{describe_last_exchange()}") from e
    expect(isinstance(heartbeat, AIHordeHeartbeatResponse), f"heartbeat parsed: version={heartbeat.version!r} message={heartbeat.message!r}")
    report_extras("heartbeat", heartbeat)

    user = call(FindUserRequest(apikey=apikey), UserDetailsResponse, "find_user")
    expect_status(200, "find_user")
    expect(user.username is not None and user.id_ is not None, f"find_user parsed: username={user.username!r} id={user.id_}")
    print(f"        kudos={user.kudos} trusted={user.trusted} moderator={user.moderator} worker_count={user.worker_count}")
    if user.trusted is not True:
        note(f"find_user: user {user.username!r} is not trusted (trusted={user.trusted}); the brief expects a trusted user")
    report_extras("find_user", user)

    # b. client submits the image request --------------------------------------------------
    step("b. client: POST /v2/generate/async")
    async_request = ImageGenerateAsyncRequest(
        apikey=apikey,
        prompt=PROMPT,
        models=[MODEL],
        r2=ARGS.r2,
        params=ImageGenerationInputPayload(
            width=SIZE,
            height=SIZE,
            steps=STEPS,
            n=1,
            sampler_name=SAMPLER,
        ),
    )
    async_response = call(async_request, ImageGenerateAsyncResponse, "generate/async")
    expect_status(202, "generate/async")
    state.request_id = str(async_response.id_)
    expect(True, f"request accepted: id={state.request_id} kudos={async_response.kudos} message={async_response.message!r}")
    for warning in async_response.warnings or []:
        print(f"        warning {warning.code}: {warning.message}")
    report_extras("generate/async", async_response)

    check = call(ImageGenerateCheckRequest(id=state.request_id), ImageGenerateCheckResponse, "generate/check (queued)")
    expect(not check.done, f"check before pop: waiting={check.waiting} processing={check.processing} done={check.done} queue_position={check.queue_position}")
    report_extras("generate/check", check)

    # c. worker pops the job ----------------------------------------------------------------
    step("c. worker: POST /v2/generate/pop")
    pop_request = ImageGenerateJobPopRequest(
        apikey=apikey,
        name=WORKER_NAME,
        models=[MODEL],
        max_pixels=MAX_PIXELS,
        bridge_agent=BRIDGE_AGENT,
        nsfw=True,  # reGen's default bridge config; our request leaves nsfw at the server default
        amount=1,
        threads=1,
    )
    deadline = time.monotonic() + ARGS.pop_timeout
    while True:
        pop = call(pop_request, ImageGenerateJobPopResponse, "generate/pop")
        expect_status(200, "generate/pop")
        if pop.ids or pop.id_ is not None:
            break
        skipped = pop.skipped.model_dump(exclude_defaults=True, by_alias=True)
        if time.monotonic() > deadline:
            raise CheckFailed(f"generate/pop returned no job within {ARGS.pop_timeout}s (skipped={skipped})\n{describe_last_exchange()}")
        print(f"        no job yet (skipped={skipped}); retrying")
        time.sleep(1.0)

    ids = [str(i) for i in pop.ids]
    state.job_id = ids[0] if ids else str(pop.id_)
    if pop.id_ is not None and ids and str(pop.id_) != ids[0]:
        raise CheckFailed(f"pop: obsolete 'id' ({pop.id_}) differs from ids[0] ({ids[0]})")
    if pop.id_ is None:
        # horde-worker-reGen decides "no job available" from `id_` alone, and horde-sdk's session
        # follow-up/cleanup logic keys on it too, so a job handed out with "id": null is lost.
        raise CheckFailed(f"pop: job handed out (ids={ids}) but the obsolete 'id' is null; reGen would "
                          f"treat this as 'no job available'\n{describe_last_exchange()}")
    expect(len(ids) == 1, f"pop: one job id {ids}")
    expect(pop.model == MODEL, f"pop: model={pop.model!r}")
    payload = pop.payload
    expect(payload.prompt == PROMPT, f"pop: payload.prompt={payload.prompt!r}")
    expect(payload.width == SIZE and payload.height == SIZE, f"pop: payload size {payload.width}x{payload.height}")
    expect(payload.ddim_steps == STEPS, f"pop: payload.ddim_steps={payload.ddim_steps}")
    expect(payload.n_iter == 1, f"pop: payload.n_iter={payload.n_iter}")
    expect(str(payload.sampler_name) == SAMPLER, f"pop: payload.sampler_name={payload.sampler_name!r}")
    seed_raw = payload.seed
    expect(seed_raw is not None and str(seed_raw).lstrip("-").isdigit(),
           f"pop: payload.seed={seed_raw!r} (a string of digits; reGen submits int(payload.seed))")
    seed = int(seed_raw)  # type: ignore[arg-type]
    print(f"        ttl={pop.ttl} r2_upload={'<set>' if pop.r2_upload else None} r2_uploads={len(pop.r2_uploads or [])} "
          f"source_processing={pop.source_processing!r} skipped={pop.skipped.model_dump(exclude_defaults=True, by_alias=True)}")
    report_extras("generate/pop", pop)

    check = call(ImageGenerateCheckRequest(id=state.request_id), ImageGenerateCheckResponse, "generate/check (processing)")
    print(f"        check after pop: waiting={check.waiting} processing={check.processing} finished={check.finished} done={check.done}")
    if check.processing != 1:
        note(f"check after pop: processing={check.processing}, AI Horde reports 1 for a popped, unsubmitted job")

    # d. worker makes a WebP and submits it ------------------------------------------------
    step("d. worker: upload + POST /v2/generate/submit")
    webp = make_test_webp()
    with PIL.Image.open(io.BytesIO(webp)) as probe:
        expect(probe.format == "WEBP" and probe.size == (SIZE, SIZE), f"made a {probe.size[0]}x{probe.size[1]} WebP ({len(webp)} bytes)")

    if ARGS.r2:
        if not pop.r2_upload:
            raise CheckFailed(f"pop: r2=true request but no r2_upload URL in the pop response\n{describe_last_exchange()}")
        if pop.r2_uploads and pop.r2_uploads[0] != pop.r2_upload:
            note("pop: r2_uploads[0] differs from r2_upload")
        # Exactly what horde-worker-reGen does: plain requests.put of the bytes, no extra headers,
        # and it treats any status other than 200 as a failed upload.
        put = requests.put(pop.r2_upload, data=webp)
        if put.status_code != 200:
            raise CheckFailed(f"R2 upload: PUT {pop.r2_upload} answered {put.status_code} (reGen requires 200)\n{describe_last_exchange()}")
        ok(f"R2 upload: PUT r2_upload -> {put.status_code}")
        generation = "R2"
    else:
        generation = base64.b64encode(webp).decode("ascii")

    submit_request = ImageGenerationJobSubmitRequest(
        apikey=apikey,
        id=state.job_id,
        generation=generation,
        state=GENERATION_STATE.ok,
        seed=seed,
        censored=False,
    )
    submit = call(submit_request, JobSubmitResponse, "generate/submit")
    expect_status(200, "generate/submit")
    state.submitted = True
    expect(True, f"submit accepted: reward={submit.reward}")
    report_extras("generate/submit", submit)

    # e. client waits, fetches the status and the image ------------------------------------
    step("e. client: GET /v2/generate/check until done, then /v2/generate/status")
    deadline = time.monotonic() + ARGS.timeout
    while True:
        check = call(ImageGenerateCheckRequest(id=state.request_id), ImageGenerateCheckResponse, "generate/check")
        if check.done:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"request not done after {ARGS.timeout}s: {check.model_dump()}\n{describe_last_exchange()}")
        time.sleep(1.0)
    expect(check.done and check.finished == 1 and not check.faulted,
           f"check: done={check.done} finished={check.finished} faulted={check.faulted} kudos={check.kudos}")

    status = call(ImageGenerateStatusRequest(id=state.request_id), ImageGenerateStatusResponse, "generate/status")
    expect_status(200, "generate/status")
    expect(status.done, f"status: done={status.done} finished={status.finished}")
    expect(len(status.generations) == 1, f"status: {len(status.generations)} generation(s)")
    gen = status.generations[0]
    expect(gen.state == GENERATION_STATE.ok, f"status: generation state={gen.state!r}")
    expect(isinstance(gen.seed, str), f"status: seed is a string ({gen.seed!r})")
    expect(gen.seed == str(seed), f"status: seed equals the submitted seed {seed}")
    expect(gen.worker_name == WORKER_NAME, f"status: worker_name={gen.worker_name!r}")
    expect(str(gen.id_) == state.job_id, f"status: generation id equals the popped job id {state.job_id}")
    expect(gen.model == MODEL, f"status: model={gen.model!r}")
    expect(gen.censored is False, f"status: censored={gen.censored}")
    print(f"        worker_id={gen.worker_id} gen_metadata={gen.gen_metadata} kudos={status.kudos}")
    report_extras("generate/status", status)

    is_url = gen.img.startswith("http://") or gen.img.startswith("https://")
    if ARGS.r2:
        expect(is_url, f"status: img is a download URL for an r2 request ({gen.img[:60]}...)")
    else:
        expect(not is_url, "status: img is inline base64 for an r2=false request")
    try:
        image = AIHordeAPISimpleClient().download_image_from_generation(gen)
        image.load()
    except Exception as e:
        raise CheckFailed(f"fetching/decoding the image failed: {type(e).__name__}: {e}\n{describe_last_exchange()}") from e
    expect(image.size == (SIZE, SIZE), f"image decoded by Pillow: format={image.format} size={image.size[0]}x{image.size[1]}")
    expect(quadrants_match(image), "image content is the one the worker submitted (quadrant colours)")


def cleanup(state: State) -> None:
    """Best effort: do not leave a queued request or a dangling job behind on a shared server."""
    if state.job_id and not state.submitted:
        try:
            CLIENT.submit_request(
                ImageGenerationJobSubmitRequest(apikey=ARGS.apikey, id=state.job_id, generation="Faulted",
                                                state=GENERATION_STATE.faulted, seed=0),
                JobSubmitResponse,
            )
            print(f"   cleanup: submitted job {state.job_id} as faulted")
        except Exception as e:  # noqa: BLE001
            print(f"   cleanup: faulting job {state.job_id} failed: {e}")
    if state.request_id:
        try:
            CLIENT.submit_request(DeleteImageGenerateRequest(id=state.request_id), ImageGenerateStatusResponse)
            print(f"   cleanup: cancelled request {state.request_id}")
        except Exception as e:  # noqa: BLE001
            print(f"   cleanup: cancelling request {state.request_id} failed: {e}")


def main() -> int:
    state = State()
    try:
        run(state)
    except CheckFailed as e:
        print(f"\nFAILED: {e}", flush=True)
        cleanup(state)
        return 1
    except Exception as e:  # noqa: BLE001 - anything unexpected is a failure too, with its traceback
        print(f"\nFAILED with an unexpected {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()
        print(describe_last_exchange())
        cleanup(state)
        return 1
    print(f"\nPASSED: one image request round-tripped through horde-sdk {horde_sdk_version()} (r2={ARGS.r2})")
    if NOTES:
        print(f"{len(NOTES)} note(s):")
        for line in NOTES:
            print(f"  - {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
