#!/usr/bin/env python3
"""Check our SD 1.x LDM checkpoint layout (`atelier_engine::ldm`, `tiny::write_ldm_checkpoint`) against
diffusers' single-file loader.

    /work/venv-ref/bin/python crates/engine/tools/reference/check_ldm_checkpoint.py

It runs `cargo run -p atelier-engine --example write_tiny_checkpoint -- <tmp>`, which writes a tiny SD 1.x model
(`sd1-twin`, diffusers layout) and the same weights as one LDM checkpoint (`sd1-ldm.safetensors`).
diffusers' `StableDiffusionPipeline.from_single_file` (offline: the configs come from the local twin folder) must
give exactly the twin's UNet, VAE and text-encoder tensors. The Rust test
`an_sd1_ldm_checkpoint_runs_like_its_diffusers_twin` shows our loader runs both files identically.
"""

import os
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusionPipeline


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


def main():
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny_checkpoint", "--", tmp],
            check=True,
        )
        folder = os.path.join(tmp, "sd1-twin")
        single = os.path.join(tmp, "sd1-ldm.safetensors")
        want = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        got = StableDiffusionPipeline.from_single_file(
            single, config=folder, local_files_only=True, safety_checker=None
        )
        counts = {
            part: same(part, getattr(want, part), getattr(got, part))
            for part in ["unet", "vae", "text_encoder"]
        }
        ids = want.tokenizer("a photo of an astronaut riding a horse").input_ids
        if ids != got.tokenizer("a photo of an astronaut riding a horse").input_ids:
            sys.exit("tokenizers differ")
        print(f"ok: identical tensors {counts}")


if __name__ == "__main__":
    main()
