"""Schemathesis hooks: the rules of our input that a JSON schema cannot state.

The spec states every bound it can (lengths, ranges, enums, patterns, "at least one field", no
NUL byte). What remains depends on the server's state or on the content of a field, and would
make Schemathesis send requests that are valid by the schema yet rightly refused. For the
positive cases only, each rule below rewrites the generated body into one that keeps to it, so
that every other part of the body is still checked. Negative cases are left as generated.

The rules, with the rc the server answers when one is broken:
  POST /generate/async
    * the prompt before any "###" is not blank (MissingPrompt): a regular expression can say
      it, but Schemathesis then spends minutes drawing prompts;
    * cfg_scale has at most two decimals, as Python's round(x, 2) decides (BadCFGDecimals);
    * models are names the model reference knows (unknown ones need customizer rights);
    * at most one upscaler among the post-processors (TooManyUpscalers);
    * source images are real images: generated ones are replaced by a 64x64 WebP
      (SourceImageUnreadable), a mask only comes with a source image (SourceMaskUnnecessary)
      and is that same 64x64 image (a mask of another size is a ValidationError), inpainting
      with a source image always has a mask (the WebP has no alpha channel:
      InpaintingMissingMask), extra source images only with source_processing "remix"
      (InvalidExtraSourceImages);
    * ControlNet's fields keep together: control_strength only with a control_type
      (ControlStrengthWithoutControlType), a control_type with a source image
      (ControlNetSourceMissing) and not with inpainting (ControlNetInpaintingMismatch),
      init_as_image not with return_control_map (ControlNetInvalidPayload); a LoRA asked by
      version is named by its version id, ASCII digits (BadLoraVersion);
    * a webhook's host resolves, and to no address in the operator's network (InvalidWebhook:
      docs/webhooks.md): the runs have no DNS, so a generated webhook is dropped;
  POST /generate/batch
    * as /generate/async, and each member's prompt before any "###" is not blank;
  POST /generate/pop
    * a worker serves at least one model the reference knows (UnsupportedModel), unless its
      owner is a customizer;
  POST /generate/text/async
    * the prompt is not blank (MissingPrompt) and fits the context left beside max_length, 8
      characters a token (TokenOverflow); max_length is at most max_context_length
      (TokenOverflow);
    * models are names the text model reference knows (UnsupportedModel);
    * a custom sampler_order names all seven samplers (MissingFullSamplerOrder); stop
      sequences are at most 128 distinct ones of 2000 characters in all
      (TooManyStopSequences, ExcessiveStopSequence);
    * no softprompt (no worker offers one: BadRequest), no extra source images
      (InvalidExtraSourceImages), no webhook (as above);
  POST /generate/text/pop
    * a text worker serves at least one model the text reference knows (UnsupportedModel),
      and its name is not an image worker's (PolymorphicNameConflict): "~t" is appended;
  POST /interrogate/async
    * forms are ones this horde runs (BadRequest): unknown names become "caption"; the source
      image is a real image (SourceImageUnreadable): replaced by the 64x64 WebP; no webhook, no
      form payload (its size is bounded, 4096 bytes);
  POST /interrogate/pop
    * an alchemist runs at least one known form (BadRequest), and its name is no other kind's
      worker's (PolymorphicNameConflict): "~a" is appended;
  PUT /workers/{id}
    * a new name is not another worker's (WorkerNameAlreadyExists): a counter is appended;
    * names, infos and bridge agents (also in a pop) are not profane (ProfaneWorkerName, …):
      generated text is replaced by as many "w"s;
  POST /kudos/transfer
    * the receiver is an existing user other than the sender (InvalidTargetUsername), and the
      amount at most what the sender has left (KudosValidationError): 1 at most here;
  /filters/{id} (every case, negative ones too)
    * the id is not "regex", which is `GET /filters/regex`'s path;
  PUT /filters, PATCH /filters/{id}
    * the regex compiles: Python's re compiles it and it uses nothing Rust's
      regex crate lacks (look-around, back-references, possessive quantifiers); BadRequest.
"""
import os
import re

import schemathesis

KNOWN_MODEL = "stable_diffusion"
KNOWN_TEXT_MODEL = "koboldcpp/Marx-3B-V3"
UPSCALERS = {
    "RealESRGAN_x4plus", "RealESRGAN_x2plus", "RealESRGAN_x4plus_anime_6B", "NMKD_Siax",
    "4x_AnimeSharp", "4xNomos8kSC", "4xLSDIRplus", "4xNomosWebPhoto_RealPLKSR",
    "4xNomos2_realplksr_dysample", "4xNomos2_hq_dat2", "2xModernSpanimationV1",
}
# A 64x64 lossless WebP of one colour (Pillow: Image.new("RGB", (64, 64), (200, 120, 40))).
SOURCE_IMAGE = "UklGRiQAAABXRUJQVlA4TBcAAAAvP8APAAdQvCIXpf8BICH8f69F9D/1AwA="
TRANSFER_TARGET = os.environ.get("HORDE_SCHEMATHESIS_TARGET", "")


# White space as Rust's str::trim sees it (Unicode White_Space).
_BLANK = re.compile("[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*")


def _image_request(body):
    prompt = body.get("prompt")
    if isinstance(prompt, str) and _BLANK.fullmatch(prompt.split("###")[0]):
        body["prompt"] = "a cat" + prompt
    params = body.get("params")
    if isinstance(params, dict):
        cfg = params.get("cfg_scale")
        if isinstance(cfg, (int, float)) and not isinstance(cfg, bool):
            params["cfg_scale"] = round(cfg, 2)
        pps = params.get("post_processing")
        if isinstance(pps, list):
            upscalers = [p for p in pps if p in UPSCALERS]
            params["post_processing"] = [p for p in pps if p not in UPSCALERS] + upscalers[:1]
    if isinstance(body.get("models"), list) and body["models"]:
        body["models"] = [KNOWN_MODEL]
    for field in ("source_image", "source_mask"):
        if isinstance(body.get(field), str):
            body[field] = SOURCE_IMAGE
    if body.get("source_mask") is not None and body.get("source_image") is None:
        del body["source_mask"]
    if body.get("source_processing") == "inpainting" and isinstance(body.get("source_image"), str):
        body["source_mask"] = SOURCE_IMAGE
    _networks(body)
    extras = body.get("extra_source_images")
    if isinstance(extras, list) and extras:
        for extra in extras:
            if isinstance(extra, dict) and isinstance(extra.get("image"), str):
                extra["image"] = SOURCE_IMAGE
        body["source_processing"] = "remix"
    body.pop("webhook", None)


def _networks(body):
    params = body.get("params")
    if not isinstance(params, dict):
        return
    if params.get("control_strength") is not None and params.get("control_type") is None:
        del params["control_strength"]
    if params.get("control_type") is not None:
        body["source_image"] = SOURCE_IMAGE
        if body.get("source_processing") == "inpainting":
            body["source_processing"] = "img2img"
    if params.get("init_as_image") is True and params.get("return_control_map") is True:
        params["init_as_image"] = False
    for lora in params.get("loras") or []:
        if isinstance(lora, dict) and lora.get("is_version") is True:
            name = lora.get("name")
            if not (isinstance(name, str) and name and all("0" <= c <= "9" for c in name)):
                lora["name"] = "1"


def _batch(body):
    _image_request(body)
    body.pop("prompt", None)
    for member in body.get("prompts") or []:
        prompt = member.get("prompt") if isinstance(member, dict) else None
        if isinstance(prompt, str) and _BLANK.fullmatch(prompt.split("###")[0]):
            member["prompt"] = "a cat" + prompt


def _transfer(body):
    if "username" in body:
        body["username"] = TRANSFER_TARGET
    amount = body.get("amount")
    if isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 1:
        body["amount"] = 1


# Constructs of Python's and ECMA's regex syntax that Rust's regex crate refuses.
_NOT_RUST = re.compile(
    r"\(\?[=!<]|\\[0-9]|\(\?P=|\(\?\(|[*+?}]\+|\(\?>"  # look-around, back-references, …
    r"|\\[ZNg]|\\[^\x00-\x7f]"  # escapes Python knows (or lets pass) and Rust does not
    r"|(?<!\\)[{}]"  # braces: Python reads a stray one as text, Rust as a broken repetition
)


def _compiles(regex):
    try:
        re.compile(regex)
    except (re.error, OverflowError, RecursionError):
        return False
    return not _NOT_RUST.search(regex)


def _filter(body):
    regex = body.get("regex")
    if isinstance(regex, str) and not _compiles(regex):
        body["regex"] = "cat"


def _plain(text):
    """A text of the same length that no profanity check can object to."""
    return "w" * len(text)


def _pop(body):
    models = body.get("models")
    if isinstance(models, list) and KNOWN_MODEL not in models:
        body["models"] = [KNOWN_MODEL] + models[1:]
    for field in ("name", "bridge_agent"):
        if isinstance(body.get(field), str):
            body[field] = _plain(body[field])


def _text_request(body):
    body.pop("softprompt", None)
    body.pop("webhook", None)
    body["extra_source_images"] = []
    if isinstance(body.get("models"), list) and body["models"]:
        body["models"] = [KNOWN_TEXT_MODEL]
    params = body.get("params")
    if isinstance(params, dict):
        length, context = params.get("max_length", 80), params.get("max_context_length", 2048)
        if isinstance(length, int) and isinstance(context, int) and length >= context:
            # The prompt needs a token of room (the schema's bounds keep both within 16..).
            params["max_length"], params["max_context_length"] = min(context, length) - 1, max(context, length)
        order = params.get("sampler_order")
        if isinstance(order, list) and order:
            params["sampler_order"] = [6, 0, 1, 3, 4, 2, 5]
        stops = params.get("stop_sequence")
        if isinstance(stops, list):
            params["stop_sequence"] = [s[:15] for s in stops if isinstance(s, str)][:128]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        p = params if isinstance(params, dict) else {}
        length, context = p.get("max_length", 80), p.get("max_context_length", 2048)
        room = 8 * (context - length) if isinstance(length, int) and isinstance(context, int) else 0
        if _BLANK.fullmatch(prompt):
            prompt = "a cat" + prompt
        body["prompt"] = prompt[: max(room, 5)] if room > 0 else "a"


def _text_pop(body):
    models = body.get("models")
    if not isinstance(models, list):
        body["models"] = [KNOWN_TEXT_MODEL]
    elif KNOWN_TEXT_MODEL not in models:
        body["models"] = [KNOWN_TEXT_MODEL] + models[1:]
    for field in ("name", "bridge_agent"):
        if isinstance(body.get(field), str):
            body[field] = _plain(body[field])
    if isinstance(body.get("name"), str):
        body["name"] = body["name"][:98] + "~t"


KNOWN_FORMS = {"caption", "interrogation", "nsfw"} | UPSCALERS | {
    "GFPGAN", "CodeFormers", "strip_background", "GFPGANv1.3", "RestoreFormer"}


def _interrogation(body):
    body.pop("webhook", None)
    body["source_image"] = SOURCE_IMAGE
    forms = body.get("forms")
    if isinstance(forms, list):
        for form in forms:
            if isinstance(form, dict):
                form.pop("payload", None)  # at most 4096 bytes: beyond what the spec states
                if form.get("name") not in KNOWN_FORMS:
                    form["name"] = "caption"


def _alchemist(body):
    forms = body.get("forms")
    if not isinstance(forms, list) or not any(isinstance(f, str) and f in KNOWN_FORMS for f in forms):
        body["forms"] = ["caption"]
    for field in ("name", "bridge_agent"):
        if isinstance(body.get(field), str):
            body[field] = _plain(body[field])
    if isinstance(body.get("name"), str):
        body["name"] = body["name"][:98] + "~a"


_renames = iter(range(10**9))


def _worker(body):
    name = body.get("name")
    if isinstance(name, str):
        # The three runs share the server, each from its own process.
        body["name"] = f"{_plain(name[:80])} {os.getpid()}-{next(_renames)}"
    if isinstance(body.get("info"), str):
        body["info"] = _plain(body["info"])


def _style(body):
    # Style and collection names are unique among one owner's (400), as workers' names are.
    name = body.get("name")
    if isinstance(name, str):
        body["name"] = f"{name[:80]} {os.getpid()}-{next(_renames)}"


def _style_example(body):
    # An example's URL is used once per style (ExampleURLAlreadyInUse).
    url = body.get("url")
    if isinstance(url, str):
        body["url"] = f"{url[:1000]}#{os.getpid()}-{next(_renames)}"


def _no_style(rule):
    """`rule`, then the request names no style (another run's style would decide its fate)."""

    def apply(body):
        rule(body)
        body.pop("style", None)

    return apply


RULES = {
    ("PUT", "/api/v2/workers/{id}"): _worker,
    # Team names are unique (TeamNameAlreadyExists) and profanity-checked, as workers' names.
    ("POST", "/api/v2/teams"): _worker,
    ("PATCH", "/api/v2/teams/{id}"): _worker,
    ("POST", "/api/v2/generate/pop"): _pop,
    ("POST", "/api/v2/generate/async"): _no_style(_image_request),
    ("POST", "/api/v2/generate/batch"): _no_style(_batch),
    ("POST", "/api/v2/generate/text/async"): _no_style(_text_request),
    ("POST", "/api/v2/generate/text/pop"): _text_pop,
    ("POST", "/api/v2/interrogate/async"): _interrogation,
    ("POST", "/api/v2/interrogate/pop"): _alchemist,
    ("POST", "/api/v2/kudos/transfer"): _transfer,
    ("PUT", "/api/v2/filters"): _filter,
    ("PATCH", "/api/v2/filters/{id}"): _filter,
    ("POST", "/api/v2/styles/image"): _style,
    ("PATCH", "/api/v2/styles/image/{style_id}"): _style,
    ("POST", "/api/v2/styles/text"): _style,
    ("PATCH", "/api/v2/styles/text/{style_id}"): _style,
    ("POST", "/api/v2/collections"): _style,
    ("PATCH", "/api/v2/collections/{collection_id}"): _style,
    ("POST", "/api/v2/styles/image/{style_id}/example"): _style_example,
    ("PATCH", "/api/v2/styles/image/{style_id}/example/{example_id}"): _style_example,
}


@schemathesis.hook
def map_case(context, case):
    # `GET /filters/regex` is an operation of its own (as on the public horde), so a negative
    # case that draws the id "regex" (not a UUID) for `/filters/{id}` reaches that one and is
    # answered 200: it would test the other operation, not this one.
    parameters = case.path_parameters or {}
    if case.operation.path == "/api/v2/filters/{id}" and parameters.get("id") == "regex":
        parameters["id"] = "regex-"
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return case
    rule = RULES.get((case.operation.method.upper(), case.operation.path))
    if rule is not None:
        rule(case.body)
    return case
