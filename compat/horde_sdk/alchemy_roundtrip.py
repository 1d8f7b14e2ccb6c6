#!/usr/bin/env python3
"""Drive one interrogation ("alchemy") through the real `horde-sdk` (PyPI) against a horde
coordinator: the client's async with a caption form on a base64 image, the alchemist's pop, the
source image downloaded from the pop's URL, the submit, the client's status; then a second
request cancelled.

Usage:
    python alchemy_roundtrip.py --url http://127.0.0.1:PORT --apikey KEY

KEY is the 22-character API key of a registered (trusted) user, both the requester and the
owner of the alchemist "sdk-alchemist". Every request is one of horde-sdk's request models sent
by its own client (`AIHordeAPIManualClient.submit_request`) and every answer is parsed by its
response models. Exit status 0 when every step passed, 1 on the first failure.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--url", required=True)
PARSER.add_argument("--apikey", required=True)
ARGS = PARSER.parse_args()

os.environ["AI_HORDE_URL"] = ARGS.url.rstrip("/") + "/api/"
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")
for _var in ("AI_HORDE_DEV_URL", "AI_HORDE_DEV_APIKEY", "TESTS_ONGOING", "HORDE_SDK_TELEMETRY"):
    os.environ.pop(_var, None)

import PIL.Image  # noqa: E402
import requests  # noqa: E402
from sdk_calls import LAST, CheckFailed, call, expect, main  # noqa: E402

from horde_sdk.ai_horde_api.apimodels import (  # noqa: E402
    AlchemyAsyncRequest,
    AlchemyAsyncRequestFormItem,
    AlchemyAsyncResponse,
    AlchemyDeleteRequest,
    AlchemyJobPopResponse,
    AlchemyJobSubmitRequest,
    AlchemyJobSubmitResponse,
    AlchemyPopRequest,
    AlchemyStatusRequest,
    AlchemyStatusResponse,
)

CAPTION = "a red square on a white ground"


def image_base64() -> str:
    image = PIL.Image.new("RGB", (96, 64), (255, 255, 255))
    image.paste((220, 20, 20), (24, 16, 72, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", lossless=True)
    return base64.b64encode(buffer.getvalue()).decode()


def run() -> None:
    key = ARGS.apikey
    form = AlchemyAsyncRequestFormItem(name="caption")
    asked = call(AlchemyAsyncRequest(apikey=key, forms=[form], source_image=image_base64()), AlchemyAsyncResponse)
    expect(LAST[0].status_code == 202 and asked.id_ is not None, f"interrogation accepted: id={asked.id_}")

    pop = call(
        AlchemyPopRequest(apikey=key, name="sdk-alchemist", forms=["caption"], amount=1, priority_usernames=[],
                          bridge_agent="AI Horde Worker reGen:9.0.1:https://example.invalid"),
        AlchemyJobPopResponse,
    )
    expect(bool(pop.forms), f"a form popped: {pop.forms}")
    job = pop.forms[0]
    source = requests.get(str(job.source_image), timeout=30)
    expect(source.status_code == 200, "the source image downloaded from the pop's URL")
    downloaded = PIL.Image.open(io.BytesIO(source.content))
    expect(downloaded.size == (96, 64), f"it is the image sent: {downloaded.size}")

    paid = call(AlchemyJobSubmitRequest(apikey=key, id=job.id_, result={"caption": CAPTION}, state="ok"),
                AlchemyJobSubmitResponse)
    expect(paid.reward > 0, f"form submitted: reward={paid.reward}")

    status = call(AlchemyStatusRequest(id=asked.id_), AlchemyStatusResponse)
    expect(str(status.state).lower().endswith("done"), f"status {status.state}")
    result = status.forms[0].result
    caption = getattr(result, "caption", None) or (result or {}).get("caption")  # type: ignore[union-attr]
    expect(caption == CAPTION, f"the caption came back: {caption!r}")

    second = call(AlchemyAsyncRequest(apikey=key, forms=[form], source_image=image_base64()), AlchemyAsyncResponse)
    cancelled = call(AlchemyDeleteRequest(id=second.id_), AlchemyStatusResponse)
    expect(cancelled is not None, f"a second interrogation cancelled ({cancelled.state})")
    print("PASSED: one interrogation round-tripped through horde-sdk", flush=True)


if __name__ == "__main__":
    main(run)
