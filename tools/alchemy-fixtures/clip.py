"""CLIP fixtures: a tiny random transformers `CLIPModel` (ViT-L/14's layout and geometry: 224
pixels, 14-pixel patches, quick GELU, the 49 408-token vocabulary; narrow and two layers deep),
the reference `CLIPImageProcessorPil` pixels, image and text embeddings, and the interrogation
form's ranking exactly as horde-clipfree's `Interrogator.rank` computes it, over the committed
term lists. Writes crates/horde-alchemy/tests/fixtures/clip/ (README.md)."""

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

import common

SEED = 2801
OUT = common.FIXTURES / "clip"
# A few prompts for the text tower alone (one longer than the 77-token context, truncated).
PROMPTS = [
    "a photograph of a lake at dawn",
    "A FLOWER, macro photo &amp; bokeh",
    "Vincent van Gogh",
    " ".join(["very"] * 90) + " long",
]
TOP_COUNT = 5  # the alchemist's default `top_count` (AI-Horde-Worker, interrogation.py)


def tiny_config() -> CLIPConfig:
    text = dict(
        vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=49406, eos_token_id=2, pad_token_id=1,
    )
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=14, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=12)


def normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def image_embeds(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return model.visual_projection(pooled)


def text_embeds(model: CLIPModel, ids: torch.Tensor) -> torch.Tensor:
    out = []
    for start in range(0, ids.shape[0], 512):
        pooled = model.text_model(input_ids=ids[start : start + 512]).pooler_output
        out.append(model.text_projection(pooled))
    return torch.cat(out)


def rank(image: torch.Tensor, texts: torch.Tensor, terms: list[str]) -> list[dict]:
    """horde-clipfree's `Interrogator.rank` for one image embedding (both sides normalised)."""
    similarity = (100.0 * image.unsqueeze(0) @ texts.T).softmax(dim=-1)
    top_probs, top_labels = similarity.topk(min(TOP_COUNT, len(terms)), dim=-1)
    return [
        {"text": terms[int(top_labels[0][i])], "confidence": float(top_probs[0][i].numpy() * 100)}
        for i in range(top_probs.shape[1])
    ]


def ranking_margin(image: torch.Tensor, texts: torch.Tensor) -> float:
    """The smallest gap between neighbours among the top TOP_COUNT + 1 similarities: how far
    the ranking is from a tie."""
    sims = (image.unsqueeze(0) @ texts.T)[0].sort(descending=True).values[: TOP_COUNT + 1]
    return float((sims[:-1] - sims[1:]).min())


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    images = common.save_images(common.test_images(), OUT)
    config = tiny_config()
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    common.randomise(model, SEED)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "model.safetensors")
    config.save_pretrained(OUT)

    processor = CLIPImageProcessorPil()  # openai/clip-vit-large-patch14's preprocessor_config
    tokenizer = common.load_open_clip_tokenizer()
    lists = common.term_lists()
    expected, ranking, margins = {}, {}, {}
    with torch.no_grad():
        prompt_ids = common.padded([common.tokenize(tokenizer, p) for p in PROMPTS])
        expected["prompts.ids"] = prompt_ids.to(torch.int32)
        expected["prompts.text_embeds"] = normalised(text_embeds(model, prompt_ids))
        list_embeds, all_tokens, lengths = {}, [], []
        for key in common.LISTS:
            tokens = [common.tokenize(tokenizer, t) for t in lists[key]]
            for t in tokens:
                all_tokens.extend(t)
                lengths.append(len(t))
            list_embeds[key] = normalised(text_embeds(model, common.padded(tokens)))
        expected["terms.tokens"] = torch.tensor(all_tokens, dtype=torch.int32)
        expected["terms.lengths"] = torch.tensor(lengths, dtype=torch.int32)
        expected["terms.text_embeds_head"] = list_embeds["tags"][:16]
        for name, image in images.items():
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            embeds = normalised(image_embeds(model, pixels))[0]
            expected[f"{name}.pixel_bytes"] = common.pixels_as_bytes(pixels)
            expected[f"{name}.image_embeds"] = embeds
            logits = model.logit_scale.exp() * embeds.unsqueeze(0) @ expected["prompts.text_embeds"].T
            expected[f"{name}.logits_per_image"] = logits
            ranking[name] = {"interrogation": {k: rank(embeds, list_embeds[k], lists[k]) for k in common.LISTS}}
            margins[name] = {k: ranking_margin(embeds, list_embeds[k]) for k in common.LISTS}
    save_file({k: v.contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in expected.items()},
              OUT / "expected.safetensors")
    common.write_json(OUT / "ranking.json", ranking)
    manifest = {
        "versions": common.versions(),
        "seed": SEED,
        "reference": "transformers CLIPModel + CLIPImageProcessorPil; ranking: horde-clipfree 0.0.2 Interrogator.rank",
        "top_count": TOP_COUNT,
        "prompts": PROMPTS,
        "term_counts": {k: len(v) for k, v in lists.items()},
        "image_sizes": {k: list(v.size) for k, v in images.items()},
        "ranking_min_similarity_gap": margins,
        "sha256": {p.name: common.sha256(p) for p in sorted(OUT.iterdir()) if p.name != "manifest.json"},
    }
    common.write_json(OUT / "manifest.json", manifest)
    print({k: list(v.shape) for k, v in expected.items()})
    print("margins", margins)


if __name__ == "__main__":
    main()
