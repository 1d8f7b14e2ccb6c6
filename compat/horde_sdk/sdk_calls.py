"""What the text and alchemy round trips share: horde-sdk's manual client, a record of the last
HTTP exchange (the SDK discards the status and the raw body once parsed), and the checks.

Import it after the environment horde-sdk reads at import time is set (AI_HORDE_URL, and
TESTS_ONGOING left unset for its normal mode), as the round-trip scripts do.
"""

from __future__ import annotations

import sys

import requests
from loguru import logger

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient
from horde_sdk.generic_api.apimodels import RequestErrorResponse

logger.remove()
logger.add(sys.stderr, level="WARNING")

LAST: list[requests.Response] = []
_send = requests.sessions.Session.send


def _recording_send(self, request, **kwargs):  # type: ignore[no-untyped-def]
    response = _send(self, request, **kwargs)
    LAST[:] = [response]
    return response


requests.sessions.Session.send = _recording_send  # type: ignore[method-assign]
CLIENT = AIHordeAPIManualClient()


class CheckFailed(Exception):
    pass


def exchange() -> str:
    """The last HTTP exchange, for a failure's message."""
    if not LAST:
        return "  (no HTTP exchange)"
    r = LAST[0]
    return f"  {r.request.method} {r.request.url} -> {r.status_code}\n  body: {r.text[:2000]}"


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(f"{what}\n{exchange()}")
    print(f"   ok  {what}", flush=True)


def call(request, expected):  # type: ignore[no-untyped-def]
    """`request` sent by horde-sdk's client; the answer parsed as `expected`, or CheckFailed."""
    try:
        response = CLIENT.submit_request(request, expected)
    except Exception as e:
        raise CheckFailed(f"horde-sdk raised {type(e).__name__}: {e}\n{exchange()}") from e
    if isinstance(response, RequestErrorResponse) or not isinstance(response, expected):
        raise CheckFailed(f"{type(request).__name__}: {response}\n{exchange()}")
    return response


def main(run) -> None:  # type: ignore[no-untyped-def]
    """Runs `run`, exiting 1 with the failure on a CheckFailed."""
    try:
        run()
    except CheckFailed as e:
        print(f"FAILED: {e}", flush=True)
        sys.exit(1)
