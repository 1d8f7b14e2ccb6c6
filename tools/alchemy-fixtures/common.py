"""Shared by the alchemy fixture writers: the test images, every tensor of a tiny model made
random, the term lists and OpenAI's CLIP tokenizer as the horde's interrogator uses it."""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates/horde-alchemy/tests/fixtures"
DATA = ROOT / "crates/horde-alchemy/data"
# The result keys of the interrogation form, in horde-sdk's order (AlchemyInterrogationDetails).
LISTS = ["tags", "sites", "artists", "flavors", "mediums", "movements", "techniques"]
REGISTRY = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "registry/src"

torch.set_num_threads(1)


def registry_file(crate: str, relative: str) -> Path:
    """A file of a crate in the local cargo registry (every checkout has it once the workspace's
    dependencies are fetched)."""
    found = sorted(REGISTRY.glob(f"*/{crate}/{relative}"))
    if not found:
        raise SystemExit(f"{crate}/{relative} not in {REGISTRY}: run `cargo fetch` first")
    return found[0]


def test_images() -> dict[str, Image.Image]:
    """Two real photographs, made small: `lake.jpg` of the webp 0.3.1 crate (MIT or Apache-2.0)
    and `flower.jpg` of rust-embed 8.14.0 (MIT). Their sizes make CLIP's preprocessing upscale
    one (lake: shortest side 150 -> 224) and downscale the other (flower: 263 -> 224), each with
    an odd centre-crop margin."""
    lake = Image.open(registry_file("webp-0.3.1", "assets/lake.jpg")).convert("RGB")
    flower = Image.open(registry_file("rust-embed-8.14.0", "examples/public/images/flower.jpg"))
    return {
        "lake": lake.resize((241, 150), Image.Resampling.LANCZOS),
        "flower": flower.convert("RGB").resize((301, 263), Image.Resampling.LANCZOS),
    }


def save_images(images: dict[str, Image.Image], folder: Path) -> dict[str, Image.Image]:
    """Writes each image as PNG and reads it back, so the reference sees exactly the committed
    pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for name, image in images.items():
        path = folder / f"{name}.png"
        image.save(path, optimize=True)
        loaded[name] = Image.open(path).convert("RGB")
    return loaded


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random, none left at 0 or 1: matrices scaled by their fan-in, norms'
    weights around 1, biases and embeddings small."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            draw = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            is_norm = any(part in name for part in ("layer_norm", "layernorm", "layrnorm"))
            if is_norm and name.endswith(".weight"):
                value = 1.0 + 0.2 * draw
            elif tensor.dim() >= 2 and ("patch_embedding" in name or "embedding" not in name):
                fan_in = tensor[0].numel()
                value = draw / fan_in**0.5
            elif name.endswith("logit_scale"):
                value = 2.0 + 0.1 * draw
            else:
                value = 0.5 * draw if "embedding" in name else 0.1 * draw
            tensor.copy_(value.to(tensor.dtype))


def term_lists() -> dict[str, list[str]]:
    """The committed lists, read as horde-clipfree reads them (`load_list`: each line stripped)."""
    lists = {}
    for key in LISTS:
        with open(DATA / f"{key}.txt", encoding="utf-8", errors="replace") as f:
            lists[key] = [line.strip() for line in f.readlines()]
    return lists


def load_open_clip_tokenizer():
    """OpenAI's SimpleTokenizer (ftfy, HTML unescape, whitespace clean, lower case), open_clip's
    copy, loaded by path so that open_clip's model imports (torchvision, timm) are not needed."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed (requirements-nodeps.txt)")
    folder = Path(list(spec.submodule_search_locations)[0])
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer", folder / "tokenizer.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def tokenize(tokenizer, text: str, context_length: int = 77) -> list[int]:
    """`clip.tokenize(text, truncate=True)` of one text without the padding: start, the BPE
    tokens, end (the last token replaced by the end when truncated)."""
    sot = tokenizer.encoder["<start_of_text>"]
    eot = tokenizer.encoder["<end_of_text>"]
    tokens = [sot] + tokenizer.encode(text) + [eot]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = eot
    return tokens


def padded(token_lists: list[list[int]], context_length: int = 77) -> torch.Tensor:
    out = torch.zeros((len(token_lists), context_length), dtype=torch.long)
    for row, tokens in enumerate(token_lists):
        out[row, : len(tokens)] = torch.tensor(tokens)
    return out


MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def pixels_as_bytes(pixels: torch.Tensor) -> torch.Tensor:
    """The 8-bit image behind `CLIPImageProcessor`'s pixel values (PIL resizes and crops in 8
    bits, then rescales by 1/255 and normalises), recovered exactly: storing it is 4x smaller than
    the floats. Fails unless mapping it back gives the processor's floats within 1e-6."""
    levels = ((pixels * STD + MEAN) * 255.0).round()
    assert levels.min() >= 0 and levels.max() <= 255
    back = (levels * (1 / 255) - MEAN) / STD
    assert (back - pixels).abs().max() < 1e-6, (back - pixels).abs().max()
    return levels.to(torch.uint8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def versions() -> dict[str, str]:
    import diffusers
    import PIL
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
