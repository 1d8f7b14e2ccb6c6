"""Safety-checker fixtures: a tiny random diffusers `StableDiffusionSafetyChecker` (the layout of
CompVis/stable-diffusion-safety-checker's model.safetensors: `vision_model.vision_model.*`,
`visual_projection`, 17 concept and 3 special-care embeddings with their thresholds; a narrow
two-layer CLIP vision tower of ViT-L/14's geometry), its verdict on the two test images and every
score its `forward` computes. The thresholds are random draws placed around the images' cosines
so that the flower is flagged and the lake is not, and the flower's one bad concept is over its
threshold only by the 0.01 a special-care hit adds. Writes
crates/horde-alchemy/tests/fixtures/safety/ (README.md)."""

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessorPil

import common

SEED = 2802
OUT = common.FIXTURES / "safety"
FLAGGED, CLEAN = "flower", "lake"


def tiny_config() -> CLIPConfig:
    vision = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=14, hidden_act="quick_gelu",
    )
    return CLIPConfig(vision_config=vision, projection_dim=12)


@torch.no_grad()
def cosines(checker, pixels):
    embeds = checker.visual_projection(checker.vision_model(pixels)[1])
    special = cosine_distance(embeds, checker.special_care_embeds).float().numpy()[0]
    concept = cosine_distance(embeds, checker.concept_embeds).float().numpy()[0]
    return embeds[0], special, concept


def place_thresholds(checker, cos, generator) -> dict:
    """Random thresholds: above both images' cosines by 0.03..0.05, except one special-care
    concept between them (the flower's hit) and one concept just over the flower's cosine
    (0.004), which only the special-care adjustment of 0.01 lifts over zero."""
    f_special, l_special = cos[FLAGGED][1], cos[CLEAN][1]
    f_concept, l_concept = cos[FLAGGED][2], cos[CLEAN][2]
    special_hit = int(np.argmax(f_special - l_special))
    concept_hit = int(np.argmax(f_concept - l_concept))
    if f_special[special_hit] - l_special[special_hit] < 0.03 or f_concept[concept_hit] - l_concept[concept_hit] < 0.03:
        raise SystemExit("the images' cosines are too close for this seed; pick another SEED")
    jitter = lambda n: 0.03 + 0.02 * torch.rand(n, generator=generator).numpy()  # noqa: E731
    special = np.maximum(f_special, l_special) + jitter(3)
    special[special_hit] = (f_special[special_hit] + l_special[special_hit]) / 2
    concept = np.maximum(f_concept, l_concept) + jitter(17)
    concept[concept_hit] = f_concept[concept_hit] + 0.004
    with torch.no_grad():
        checker.special_care_embeds_weights.copy_(torch.from_numpy(special).float())
        checker.concept_embeds_weights.copy_(torch.from_numpy(concept).float())
    return {"special_hit": special_hit, "concept_hit": concept_hit}


def published_layout(state: dict) -> dict:
    """The keys of CompVis/stable-diffusion-safety-checker's model.safetensors (transformers 4's
    `CLIPVisionModel` wrapping a `vision_model`): transformers 5 names the tower's tensors
    `vision_model.embeddings…`, the published file `vision_model.vision_model.embeddings…`."""
    out = {}
    for key, value in state.items():
        if key.startswith("vision_model.") and not key.startswith("vision_model.vision_model."):
            key = "vision_model." + key
        out[key] = value.contiguous()
    return out


def reload(checker, pixels):
    """The written file loaded back the way diffusers loads the published one
    (`from_pretrained`), which must give the same tower: the fixtures are of the reloaded model."""
    reloaded = StableDiffusionSafetyChecker.from_pretrained(OUT).eval()
    with torch.no_grad():
        for name, p in pixels.items():
            a, b = cosines(checker, p)[0], cosines(reloaded, p)[0]
            assert torch.equal(a, b), f"{name}: the reloaded checker differs"
    return reloaded


def scores(checker, special_cos, cos) -> dict:
    """The loop of diffusers' `StableDiffusionSafetyChecker.forward` for one image, keeping its
    scores (numpy float32 arithmetic, `round(…, 3)`)."""
    adjustment = 0.0
    special_scores, concept_scores, bad = [], [], []
    for idx in range(len(special_cos)):
        score = round(special_cos[idx] - checker.special_care_embeds_weights[idx].item() + adjustment, 3)
        special_scores.append(float(score))
        if score > 0:
            adjustment = 0.01
    for idx in range(len(cos)):
        score = round(cos[idx] - checker.concept_embeds_weights[idx].item() + adjustment, 3)
        concept_scores.append(float(score))
        if score > 0:
            bad.append(idx)
    return {"special_scores": special_scores, "concept_scores": concept_scores, "bad_concepts": bad,
            "adjustment": adjustment}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    images = common.save_images(common.test_images(), OUT)
    config = tiny_config()
    torch.manual_seed(SEED)
    checker = StableDiffusionSafetyChecker(config).eval()
    common.randomise(checker, SEED)
    processor = CLIPImageProcessorPil()  # the pipelines' feature_extractor (CLIP's values)
    pixels = {n: processor(images=im, return_tensors="pt")["pixel_values"] for n, im in images.items()}
    with torch.no_grad():
        cos = {n: cosines(checker, p) for n, p in pixels.items()}
        placed = place_thresholds(checker, cos, torch.Generator().manual_seed(SEED))
    save_file(published_layout(checker.state_dict()), OUT / "model.safetensors")
    config.save_pretrained(OUT)
    checker = reload(checker, pixels)

    expected, verdicts = {}, {}
    for name, image in images.items():
        _, has_nsfw = checker(clip_input=pixels[name], images=[np.asarray(image)])
        embeds, special_cos, concept_cos = cosines(checker, pixels[name])
        result = scores(checker, special_cos, concept_cos)
        assert (len(result["bad_concepts"]) > 0) == has_nsfw[0], "the replayed loop disagrees with forward"
        verdicts[name] = {"has_nsfw_concepts": bool(has_nsfw[0]), **result}
        expected[f"{name}.pixel_bytes"] = common.pixels_as_bytes(pixels[name])
        expected[f"{name}.image_embeds"] = embeds.detach()
        expected[f"{name}.special_cos"] = torch.from_numpy(special_cos)
        expected[f"{name}.concept_cos"] = torch.from_numpy(concept_cos)
    assert verdicts[FLAGGED]["has_nsfw_concepts"] and not verdicts[CLEAN]["has_nsfw_concepts"]
    save_file({k: v.contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in expected.items()}, OUT / "expected.safetensors")
    common.write_json(OUT / "verdicts.json", verdicts)
    manifest = {
        "versions": common.versions(),
        "seed": SEED,
        "reference": "diffusers StableDiffusionSafetyChecker.forward; pixels: transformers CLIPImageProcessorPil",
        "placed_thresholds": placed,
        "image_sizes": {k: list(v.size) for k, v in images.items()},
        "sha256": {p.name: common.sha256(p) for p in sorted(OUT.iterdir()) if p.name != "manifest.json"},
    }
    common.write_json(OUT / "manifest.json", manifest)
    print(verdicts)


if __name__ == "__main__":
    main()
