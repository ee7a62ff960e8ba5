"""MuseTalk model folders in the published layout, with random weights: tiny ones for the tests,
and ones of the published sizes for ``bench/neural.py --engine musetalk`` (speed does not depend
on the weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TINY_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "sample_size": 32,
    "in_channels": 8,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 384,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
#: musetalkV15/musetalk.json as published: Stable Diffusion 1.4's UNet with 8 input channels and
#: cross-attention on whisper-tiny's 384-wide features
PUBLISHED_UNET: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def make_model_dir(root: Path, published_sizes: bool = False) -> Path:
    """MuseTalk's published layout under *root*: musetalkV15/ (musetalk.json, unet.pth),
    sd-vae/ and whisper/ (diffusers and transformers folders), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    unet_config = PUBLISHED_UNET if published_sizes else TINY_UNET
    (root / "musetalkV15").mkdir(parents=True)
    (root / "musetalkV15" / "musetalk.json").write_text(json.dumps(unet_config))
    unet = UNet2DConditionModel(**{k: v for k, v in unet_config.items() if not k.startswith("_")})
    torch.save(unet.state_dict(), root / "musetalkV15" / "unet.pth")
    if published_sizes:  # sd-vae-ft-mse: diffusers' AutoencoderKL defaults at these widths
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=256,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        whisper = WhisperConfig(d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
                                encoder_ffn_dim=1536, decoder_ffn_dim=1536, num_mel_bins=80)  # whisper-tiny
    else:
        vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=256,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        whisper = WhisperConfig(d_model=384, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                                encoder_ffn_dim=64, decoder_ffn_dim=64, max_target_positions=8, vocab_size=100,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    vae.save_pretrained(root / "sd-vae")
    WhisperModel(whisper).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    return root
