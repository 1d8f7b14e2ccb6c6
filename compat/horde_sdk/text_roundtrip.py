#!/usr/bin/env python3
"""Drive one text request through the real `horde-sdk` (PyPI) against a horde coordinator: the
client's async, the worker's pop and submit, the client's status, a cancel, and the text stats.

Usage:
    python text_roundtrip.py --url http://127.0.0.1:PORT --apikey KEY

KEY is the 22-character API key of a registered (trusted) user, who is both the requester and
the owner of the text worker "sdk-text-worker". Every request is one of horde-sdk's request
models sent by its own client (`AIHordeAPIManualClient.submit_request`), and every answer is
parsed by its response models, as KoboldAI Lite's and the AI Horde text worker's calls would be
(the same models back the SDK's text worker helpers). Exit status 0 when every step passed, 1 on
the first failure (printed with the raw HTTP exchange), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--url", required=True)
PARSER.add_argument("--apikey", required=True)
ARGS = PARSER.parse_args()

# Read by horde-sdk at import time: the base URL, and its non-strict mode (what users run).
os.environ["AI_HORDE_URL"] = ARGS.url.rstrip("/") + "/api/"
os.environ.setdefault("LOGURU_LEVEL", "WARNING")
os.environ.setdefault("LOGFIRE_IGNORE_NO_CONFIG", "1")
for _var in ("AI_HORDE_DEV_URL", "AI_HORDE_DEV_APIKEY", "TESTS_ONGOING", "HORDE_SDK_TELEMETRY"):
    os.environ.pop(_var, None)

import requests  # noqa: E402
from sdk_calls import LAST, CheckFailed, call, expect, main  # noqa: E402

from horde_sdk.ai_horde_api.apimodels import (  # noqa: E402
    DeleteTextGenerateRequest,
    ModelGenerationInputKobold,
    JobSubmitResponse,
    TextGenerateAsyncRequest,
    TextGenerateAsyncResponse,
    TextGenerateJobPopRequest,
    TextGenerateJobPopResponse,
    TextGenerateStatusRequest,
    TextGenerateStatusResponse,
    TextGenerationJobSubmitRequest,
    TextStatsModelsTotalRequest,
    TextStatsModelsTotalResponse,
)


MODEL = "koboldcpp/Marx-3B-V3"
WORKER = "sdk-text-worker"
BRIDGE_AGENT = "KoboldCppEmbedWorker:2:https://github.com/LostRuins/koboldcpp"
PROMPT = "The lighthouse keeper opened the door and"
TEXT = " saw the sea had gone quiet, as if it were listening for someone."

def run() -> None:
    key = ARGS.apikey
    params = ModelGenerationInputKobold(max_length=64, max_context_length=1024, temperature=0.7)
    asked = call(TextGenerateAsyncRequest(apikey=key, prompt=PROMPT, models=[MODEL], params=params), TextGenerateAsyncResponse)
    expect(LAST[0].status_code == 202 and asked.id_ is not None, f"text async accepted: id={asked.id_} kudos={asked.kudos}")

    pop_request = TextGenerateJobPopRequest(
        apikey=key, name=WORKER, models=[MODEL], max_length=512, max_context_length=2048,
        bridge_agent=BRIDGE_AGENT, amount=1, threads=1, nsfw=True, priority_usernames=[], softprompts=[],
    )
    deadline = time.monotonic() + 15
    while True:
        job = call(pop_request, TextGenerateJobPopResponse)
        if job.id_ is not None or job.ids:
            break
        if time.monotonic() > deadline:
            raise CheckFailed(f"no text job popped (skipped={job.skipped})\n{exchange()}")
        time.sleep(1)
    job_id = str(job.ids[0] if job.ids else job.id_)
    expect(job.payload.prompt == PROMPT, f"popped job {job_id}: model={job.model} prompt as sent")
    expect(job.payload.max_length == 64, f"payload max_length={job.payload.max_length}")

    paid = call(TextGenerationJobSubmitRequest(apikey=key, id=job_id, generation=TEXT, state="ok"), JobSubmitResponse)
    expect(paid.reward > 0, f"text submitted: reward={paid.reward}")

    status = call(TextGenerateStatusRequest(id=asked.id_), TextGenerateStatusResponse)
    expect(status.done and len(status.generations) == 1, f"status done={status.done} generations={len(status.generations)}")
    generation = status.generations[0]
    expect(generation.text == TEXT, f"the text came back: {generation.text!r}")
    expect(generation.worker_name == WORKER and generation.model == MODEL, "worker and model named")

    second = call(TextGenerateAsyncRequest(apikey=key, prompt=PROMPT, models=[MODEL], params=params), TextGenerateAsyncResponse)
    cancelled = call(DeleteTextGenerateRequest(id=second.id_), TextGenerateStatusResponse)
    expect(not cancelled.done, "a second request cancelled (its status before the cancel answered)")
    after = call(TextGenerateStatusRequest(id=second.id_), TextGenerateStatusResponse)
    expect(after.done, "cancelled request is done")

    totals = call(TextStatsModelsTotalRequest(), TextStatsModelsTotalResponse)
    expect(totals.total == {"requests": 1, "tokens": 64}, f"text totals: {totals.total}")
    print("PASSED: one text request round-tripped through horde-sdk", flush=True)


if __name__ == "__main__":
    main(run)
