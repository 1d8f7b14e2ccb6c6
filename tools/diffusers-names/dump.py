"""Writes the tensor names and shapes that real diffusers and transformers give tiny SD 1.x,
SD 2.x and SDXL pipelines (the scaled-down architectures of `horde model tiny`), as JSON
fixtures for the Rust tests of diffusers-folder loading. Needs torch, diffusers and transformers
(e.g. the venv of tools/sampler-fixtures plus `pip install "transformers>=5"`):
`python dump.py OUT_DIR`."""

import json
import os
import sys

import diffusers
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection


def shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def vae():
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def clip(act, layers, projection=False):
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                            num_attention_heads=1, max_position_embeddings=77, hidden_act=act, projection_dim=32)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def unet(linear, down, up, context, **extra):
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, down_block_types=down, up_block_types=up,
        cross_attention_dim=context, norm_num_groups=32, use_linear_projection=linear, **extra,
    )


cross = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
pipelines = {
    # SD 1.x: 8 heads, conv projections, CLIP-L (quick GELU).
    "sd15": {"unet": unet(False, *cross, 32, attention_head_dim=8), "vae": vae(),
             "text_encoder": clip("quick_gelu", 2)},
    # SD 2.x: linear projections; the OpenCLIP encoder with its last layer removed (3 → 2).
    "sd2": {"unet": unet(True, *cross, 32, attention_head_dim=1), "vae": vae(),
            "text_encoder": clip("gelu", 2)},
    # SDXL: no attention at level 0, depth 2, two encoders, size conditioning.
    "sdxl": {"unet": unet(True, ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"), 64,
                          attention_head_dim=1, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                          addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8),
             "vae": vae(), "text_encoder": clip("quick_gelu", 2), "text_encoder_2": clip("gelu", 3, projection=True)},
}
os.makedirs(sys.argv[1], exist_ok=True)
for name, parts in pipelines.items():
    out = {"diffusers": diffusers.__version__, "transformers": transformers.__version__}
    out.update({part: shapes(module) for part, module in parts.items()})
    with open(os.path.join(sys.argv[1], f"diffusers_tiny_{name}_names.json"), "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)
    print(name, {part: len(v) for part, v in out.items() if isinstance(v, dict)})
