"""Random-weight checkpoints of the alchemy forms' real models, for the caption and CLIP
interrogation benchmark (`cargo bench -p horde-alchemy --bench alchemy`, alchemy_bench.py).

    alchemy_model.py [--dir ~/.cache/horde/alchemy-bench] [--force]

Writes, once (outside the clone; about 3.6 GB):

* blip-large/: `BlipForConditionalGeneration` with the configuration of
  Salesforce/blip-image-captioning-large (the horde's `BLIP_Large`), in transformers' own layout
  (`save_pretrained`: config.json, model.safetensors, generation_config.json), with a BERT
  WordPiece tokenizer of the real size (30 522 pieces, then `[DEC]` and `[ENC]` as BLIP adds
  them: vocabulary 30 524) and `BlipImageProcessor` at 384².
* clip-vit-large-patch14/: `CLIPModel` with openai/clip-vit-large-patch14's configuration
  (config.json, model.safetensors; the Rust side tokenizes with OpenAI's built-in BPE).

The Hugging Face hub cannot be reached from here, so the configurations are written by hand from
the published `config.json` files of those two repositories (values that differ from
transformers' class defaults; the rest are the defaults the published files also carry):

* BLIP large: vision ViT-L/16 (hidden 1024, 24 layers, 16 heads, MLP 4096, 384-pixel images,
  16-pixel patches, layer-norm eps 1e-5); text decoder BERT-base sized (hidden 768, 12 layers,
  12 heads, MLP 3072, 512 positions, cross-attention width 1024 = the vision width, vocabulary
  30 524, `[DEC]` = 30522 the start token, `[SEP]` = 102 the end); projection 512.
* CLIP ViT-L/14: vision hidden 1024, 24 layers, 16 heads, MLP 4096, 224 pixels, 14-pixel
  patches; text hidden 768, 12 layers, 12 heads, MLP 3072, 77 positions, vocabulary 49 408;
  projection 768; quick GELU in both towers.

Every tensor is drawn from a seeded normal (matrices scaled by their fan-in, norms' weights
around 1): speed does not depend on the values, but random weights make the caption run to
`max_length` (the end token is as unlikely as any other), the worst case of the form.
Run in the venv of tools/alchemy-fixtures (transformers 5.24.0, torch 2.15.0).
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    CLIPConfig,
    CLIPModel,
)

SEED = 2890
BERT_PIECES = 30522  # bert-base-uncased's vocabulary, which BLIP's tokenizer extends by two


def bert_vocabulary() -> dict[str, int]:
    """bert-base-uncased's special tokens at their ids ([PAD] 0, [unused…], [UNK] 100, [CLS]
    101, [SEP] 102, [MASK] 103), the prompt's words, then filler pieces up to the real size."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += ["a", "picture", "of"]
    tokens += [f"w{i}" for i in range(BERT_PIECES - len(tokens))]
    assert len(tokens) == BERT_PIECES and len(set(tokens)) == BERT_PIECES
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer(folder: Path) -> BertTokenizer:
    tokenizer = BertTokenizer(vocab=bert_vocabulary(), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    assert len(tokenizer) == 30524 and tokenizer.bos_token_id == 30522
    tokenizer.save_pretrained(folder)
    return tokenizer


def blip_large_config() -> BlipConfig:
    text = dict(
        vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
        projection_dim=768, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=512, layer_norm_eps=1e-12, bos_token_id=30522, pad_token_id=0,
        sep_token_id=102, eos_token_id=2,
    )
    vision = dict(
        hidden_size=1024, intermediate_size=4096, projection_dim=512, num_hidden_layers=24,
        num_attention_heads=16, image_size=384, patch_size=16, layer_norm_eps=1e-5,
    )
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=512,
                      image_text_hidden_size=256)


def clip_large_config() -> CLIPConfig:
    text = dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )
    vision = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)


def randomise(model: torch.nn.Module) -> None:
    """Every floating tensor drawn afresh (tied ones once): norms' weights 1 + 0.1·N, matrices
    N / sqrt(fan-in), the rest 0.02·N; `logit_scale` at CLIP's ln(100)."""
    generator = torch.Generator().manual_seed(SEED)
    seen = set()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            draw = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if "norm" in name.lower() and name.endswith("weight"):
                value = 1.0 + 0.1 * draw
            elif name.endswith("logit_scale"):
                value = 4.6 + 0.01 * draw
            elif tensor.dim() >= 2:
                value = draw / tensor[0].numel() ** 0.5
            else:
                value = 0.02 * draw
            tensor.copy_(value.to(tensor.dtype))


def write_blip(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    model = BlipForConditionalGeneration(blip_large_config()).eval()
    randomise(model)
    model.save_pretrained(folder)
    BlipImageProcessorPil(size={"height": 384, "width": 384}).save_pretrained(folder)
    print(f"{folder}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")


def write_clip(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = clip_large_config()
    model = CLIPModel(config).eval()
    randomise(model)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    config.save_pretrained(folder)
    print(f"{folder}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path.home() / ".cache/horde/alchemy-bench")
    ap.add_argument("--force", action="store_true", help="rewrite checkpoints already there")
    args = ap.parse_args()
    for name, write in (("blip-large", write_blip), ("clip-vit-large-patch14", write_clip)):
        folder = args.dir / name
        if (folder / "model.safetensors").exists() and not args.force:
            print(f"{folder}: already written")
            continue
        write(folder)


if __name__ == "__main__":
    main()
