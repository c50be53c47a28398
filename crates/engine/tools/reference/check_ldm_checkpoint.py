#!/usr/bin/env python3
"""Check our SD 1.x, SD 2.x, SDXL and SDXL refiner LDM checkpoint layouts (`atelier_engine::ldm`, `tiny::write_ldm_checkpoint`) against
diffusers' single-file loader.

    /work/venv-ref/bin/python crates/engine/tools/reference/check_ldm_checkpoint.py

It runs `cargo run -p atelier-engine --example write_tiny_checkpoint -- <tmp>`, which writes a tiny SD 1.x model
(`sd1-twin`, diffusers layout) and the same weights as one LDM checkpoint (`sd1-ldm.safetensors`), and the same
for SD 2.x (`sd2-twin`, `sd2-ldm.safetensors`: the OpenCLIP text encoder with fused q/k/v) and SDXL (`sdxl-twin`,
`sdxl-ldm.safetensors`: Stability's SGM layout, `label_emb`, both text encoders under `conditioner.embedders.`, the
second's `text_projection` in OpenCLIP's (width, projection) layout; `StableDiffusionXLPipeline`) and the SDXL
refiner (`sdxl-refiner-twin`, `sdxl-refiner-ldm.safetensors`: its one text encoder, OpenCLIP bigG, under
`conditioner.embedders.0.model.`; `StableDiffusionXLImg2ImgPipeline` without `text_encoder`).
diffusers' `StableDiffusionPipeline.from_single_file` (offline: the configs come from the local twin folder) must
give exactly the twin's UNet, VAE and text-encoder tensors. The configs are given as a copy of the twin without
its weights, so every tensor diffusers loads comes from the single file. The Rust tests
`an_sd1_ldm_checkpoint_runs_like_its_diffusers_twin`, `an_sd2_ldm_checkpoint_runs_like_its_diffusers_twin` and
`an_sdxl_checkpoint_runs_like_its_diffusers_twin`, `an_sdxl_refiner_checkpoint_runs_like_its_diffusers_twin` show
our loader runs the files identically.
"""

import os
import shutil
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline


def same(name, want, got):
    a, b = want.state_dict(), got.state_dict()
    # Buffers transformers recreates (position ids) are not weights.
    a = {k: v for k, v in a.items() if not k.endswith("position_ids")}
    b = {k: v for k, v in b.items() if not k.endswith("position_ids")}
    if sorted(a) != sorted(b):
        sys.exit(f"{name}: different tensors: {sorted(set(a) ^ set(b))[:10]}")
    for key, t in a.items():
        if t.shape != b[key].shape or not torch.equal(t, b[key]):
            sys.exit(f"{name}: tensor {key} differs")
    return len(a)


def configs_only(folder, out):
    """A copy of the diffusers folder `folder` without its weights (configs, tokenizers, model index)."""
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    return out


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny_checkpoint", "--", tmp],
            check=True,
        )
        for family in ["sd1", "sd2", "sdxl", "sdxl-refiner"]:
            folder = os.path.join(tmp, f"{family}-twin")
            single = os.path.join(tmp, f"{family}-ldm.safetensors")
            config = configs_only(folder, os.path.join(tmp, f"{family}-config"))
            parts = ["unet", "vae", "text_encoder"]
            if family == "sdxl-refiner":
                want = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
                got = StableDiffusionXLImg2ImgPipeline.from_single_file(single, config=config, local_files_only=True)
                if want.text_encoder is not None or got.text_encoder is not None or got.tokenizer is not None:
                    sys.exit("sdxl-refiner: a first text encoder")
                parts = ["unet", "vae", "text_encoder_2"]
            elif family == "sdxl":
                want = StableDiffusionXLPipeline.from_pretrained(folder)
                got = StableDiffusionXLPipeline.from_single_file(single, config=config, local_files_only=True)
                parts.append("text_encoder_2")
            else:
                want = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
                got = StableDiffusionPipeline.from_single_file(
                    single, config=config, local_files_only=True, safety_checker=None
                )
            counts = {part: same(f"{family} {part}", getattr(want, part), getattr(got, part)) for part in parts}
            tokenizer = "tokenizer_2" if family == "sdxl-refiner" else "tokenizer"
            ids = getattr(want, tokenizer)("a photo of an astronaut riding a horse").input_ids
            if ids != getattr(got, tokenizer)("a photo of an astronaut riding a horse").input_ids:
                sys.exit(f"{family}: tokenizers differ")
            print(f"{family} ok: identical tensors {counts}")


if __name__ == "__main__":
    main()
