"""BLIP caption fixtures: a tiny random `BlipForConditionalGeneration` and its reference numbers.

Writes into crates/horde-alchemy/tests/fixtures/blip/ (or the folder given with --out):

* model/: the tiny checkpoint in transformers' own layout (`save_pretrained`: config.json,
  model.safetensors, generation_config.json) with its BERT WordPiece tokenizer (vocab.txt,
  tokenizer.json, tokenizer_config.json) and `preprocessor_config.json` (BlipImageProcessor).
  Every tensor is random (normal draws around a non-trivial centre), none left at 0 or 1.
* flower.png, lake.png: the two test photographs of `common.test_images` (301x263, 241x150).
* <image>.resized384.png: PIL's bicubic resize to 384x384, what `BlipProcessor` does to a
  picture for the real captioning model (the horde's `caption` form: torchvision's `Resize` on a
  PIL image is PIL's resize).
* reference.safetensors: per image, the processor's `pixel_values` at the tiny model's size, the
  vision model's `last_hidden_state` and the text decoder's logits for the horde's prompt prefix;
  and the pixel values and vision embeddings at 96² with the position embeddings interpolated
  (`interpolate_pos_encoding=True`), as the horde runs its 384² BLIP at 512².
* reference.json: per image, greedy ids/caption from `model.generate` and sampled ids/caption
  with the uniform draws used, under the horde's settings (prompt "a picture of ", top_k 50,
  top_p 0.9, repetition penalty 1.1, min_length 20, max_length 50; see README.md).

Sampling: `torch.multinomial`'s draws cannot be reproduced outside torch, so the sampled
reference runs transformers' own logits processors (`RepetitionPenaltyLogitsProcessor`,
`MinLengthLogitsProcessor`, `TopKLogitsWarper`, `TopPLogitsWarper`) step by step and picks the
token by the inverse CDF of its softmax at a recorded uniform draw (the same distribution as
multinomial). The greedy path of this loop is checked against `model.generate` first.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from common import save_images, test_images
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
)
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

ROOT = Path(__file__).resolve().parents[2]
SEED = 2828
IMAGE_SIZE = 64
LARGE_SIZE = 96
PROMPT = "a picture of "
SETTINGS = {
    "min_length": 20,
    "max_length": 50,
    "top_k": 50,
    "top_p": 0.9,
    "repetition_penalty": 1.1,
}
WORDS = (
    "a picture of the an in on with and is at red blue green white black small large "
    "cat dog flower lake tree sky water field man woman sitting standing next to , . "
    "##s ##ing ##ed ##er ' s road car house mountain beach snow grass table chair room window "
    "painting photo close up view yellow orange purple brown grey old young boy girl"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_tokenizer(model_dir: Path) -> BertTokenizer:
    tokens = SPECIALS + WORDS
    assert len(set(tokens)) == len(tokens)
    tokenizer = BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.save_pretrained(model_dir)
    return tokenizer


def tiny_config(tokenizer: BertTokenizer) -> BlipConfig:
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=16,
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def randomise(model: torch.nn.Module) -> None:
    """Every tensor drawn afresh: norms' scales around 1, the rest around a small offset."""
    gen = torch.Generator().manual_seed(SEED)
    seen = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        draw = torch.randn(tensor.shape, generator=gen, dtype=torch.float64)
        if "norm" in name.lower() and name.endswith("weight"):
            value = 1.0 + 0.2 * draw
        elif "embedding" in name or "decoder.weight" in name:
            value = 0.05 + 0.6 * draw
        else:
            value = 0.02 + 0.25 * draw
        with torch.no_grad():
            tensor.copy_(value.to(tensor.dtype))
        flat = tensor.detach().flatten()
        assert not bool(((flat == 0) | (flat == 1)).any()), name


def prompt_ids(tokenizer: BertTokenizer, config: BlipConfig) -> torch.Tensor:
    """The horde's prefix: the prompt tokenised, [CLS] replaced by [DEC], the final [SEP] cut."""
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    ids[:, 0] = config.text_config.bos_token_id
    return ids[:, :-1]


def processors(config: BlipConfig, sample: bool) -> LogitsProcessorList:
    eos = config.text_config.sep_token_id
    chain = [
        RepetitionPenaltyLogitsProcessor(SETTINGS["repetition_penalty"]),
        MinLengthLogitsProcessor(SETTINGS["min_length"], eos),
    ]
    if sample:
        chain += [TopKLogitsWarper(SETTINGS["top_k"]), TopPLogitsWarper(SETTINGS["top_p"])]
    return LogitsProcessorList(chain)


def run_loop(model, config, embeds, prefix, draws):
    """Step-by-step generation; `draws` None means greedy."""
    chain = processors(config, draws is not None)
    ids = prefix.clone()
    eos = config.text_config.sep_token_id
    used = []
    while ids.shape[1] < SETTINGS["max_length"]:
        logits = model.text_decoder(input_ids=ids, encoder_hidden_states=embeds).logits
        scores = chain(ids, logits[:, -1, :].to(torch.float64))
        if draws is None:
            token = int(scores.argmax(-1))
        else:
            u = float(draws[len(used)])
            used.append(u)
            cdf = torch.cumsum(torch.softmax(scores, -1)[0], 0)
            token = int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype), right=True))
            token = min(token, cdf.shape[0] - 1)
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
        if token == eos:
            break
    return ids[0].tolist(), used


def caption_of(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)[len(PROMPT):]


def reference_for(name, image, model, config, tokenizer, processor, out, tensors, rng):
    image.resize((384, 384), Image.BICUBIC).save(out / f"{name}.resized384.png")
    pixels = processor(image, return_tensors="pt").pixel_values
    embeds = model.vision_model(pixel_values=pixels).last_hidden_state
    prefix = prompt_ids(tokenizer, config)
    logits = model.text_decoder(input_ids=prefix, encoder_hidden_states=embeds).logits
    tensors[f"{name}.pixel_values"] = pixels
    tensors[f"{name}.vision_embeds"] = embeds
    tensors[f"{name}.prefix_logits"] = logits
    # The horde evaluates BLIP above its training size (512² for 384² checkpoints), the position
    # embeddings interpolated bicubically: here 96² for the 64² model.
    large = BlipImageProcessorPil(size={"height": LARGE_SIZE, "width": LARGE_SIZE})
    pixels_large = large(image, return_tensors="pt").pixel_values
    tensors[f"{name}.pixel_values_{LARGE_SIZE}"] = pixels_large
    tensors[f"{name}.vision_embeds_{LARGE_SIZE}"] = model.vision_model(
        pixel_values=pixels_large, interpolate_pos_encoding=True
    ).last_hidden_state
    greedy = model.generate(
        pixel_values=pixels,
        input_ids=tokenizer(PROMPT, return_tensors="pt").input_ids,
        do_sample=False,
        num_beams=1,
        min_length=SETTINGS["min_length"],
        max_length=SETTINGS["max_length"],
        repetition_penalty=SETTINGS["repetition_penalty"],
    )[0].tolist()
    looped, _ = run_loop(model, config, embeds, prefix, None)
    assert greedy == looped, (greedy, looped)
    draws = rng.random(SETTINGS["max_length"])
    sampled, used = run_loop(model, config, embeds, prefix, draws)
    return {
        "prefix_ids": prefix[0].tolist(),
        "greedy_ids": greedy,
        "greedy_caption": caption_of(tokenizer, greedy),
        "sampled_ids": sampled,
        "sampled_caption": caption_of(tokenizer, sampled),
        "draws": used,
    }


def tokenizer_cases(tokenizer: BertTokenizer) -> dict:
    """Encodings and decodings the Rust WordPiece tokenizer must reproduce."""
    texts = ["a picture of ", "A Picture, of the  cats.", "the dogs' car", "zebra", "standing next to"]
    encoded = [{"text": t, "ids": tokenizer(t).input_ids} for t in texts]
    rng = np.random.default_rng(SEED + 1)
    sequences = [[int(i) for i in rng.integers(0, len(tokenizer), 24)] for _ in range(6)]
    sequences.append(tokenizer("a cat, sitting . the dog ' s tree ##s", add_special_tokens=False).input_ids)
    decoded = [{"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)} for ids in sequences]
    return {"encode": encoded, "decode": decoded}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "crates/horde-alchemy/tests/fixtures/blip"))
    out = Path(parser.parse_args().out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    tokenizer = write_tokenizer(model_dir)
    config = tiny_config(tokenizer)
    model = BlipForConditionalGeneration(config).eval()
    randomise(model)
    model.save_pretrained(model_dir)
    processor = BlipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor.save_pretrained(model_dir)
    rng = np.random.default_rng(SEED)
    tensors, images = {}, {}
    with torch.no_grad():
        for name, image in sorted(save_images(test_images(), out).items()):
            images[name] = reference_for(name, image, model, config, tokenizer, processor, out, tensors, rng)
    save_file({k: v.contiguous().to(torch.float32) for k, v in tensors.items()}, out / "reference.safetensors")
    for written in [out / "reference.safetensors", *model_dir.iterdir()]:
        written.chmod(0o644)
    manifest = {
        "seed": SEED,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "prompt": PROMPT,
        "settings": SETTINGS,
        "images": images,
        "tokenizer": tokenizer_cases(tokenizer),
    }
    (out / "reference.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name, entry in images.items():
        print(name, "greedy:", repr(entry["greedy_caption"]), "sampled:", repr(entry["sampled_caption"]))


if __name__ == "__main__":
    main()
