"""Writes the tensor names and shapes that real diffusers gives a tiny SD 1.x UNet and VAE
(the same scaled-down architecture as `horde model tiny --arch sd15`), as a JSON fixture for the
Rust test of diffusers-folder loading. Needs torch and diffusers (e.g. the venv of
tools/sampler-fixtures): `python dump.py OUT.json`."""

import json
import sys

import diffusers
from diffusers import AutoencoderKL, UNet2DConditionModel

unet = UNet2DConditionModel(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
    use_linear_projection=False,
)
vae = AutoencoderKL(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
out = {
    "diffusers": diffusers.__version__,
    "unet": {k: list(v.shape) for k, v in unet.state_dict().items()},
    "vae": {k: list(v.shape) for k, v in vae.state_dict().items()},
}
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=0, sort_keys=True)
print(f"{len(out['unet'])} UNet and {len(out['vae'])} VAE tensors from diffusers {diffusers.__version__}")
