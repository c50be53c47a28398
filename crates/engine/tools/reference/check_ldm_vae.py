#!/usr/bin/env python3
"""Check our LDM VAE checkpoint layout (`atelier_engine::ldm`) against diffusers' single-file loader.

    /work/venv-ref/bin/python crates/engine/tools/reference/check_ldm_vae.py

It runs `cargo run -p atelier-engine --example write_tiny -- <tmp>`, which writes the tiny sd1 model and its VAE
rewritten as an LDM checkpoint (`sd1-vae-ldm.safetensors`, by `tiny::write_ldm_vae`). diffusers'
`AutoencoderKL.from_single_file` (offline: the config is the local `sd1/vae` folder) must give exactly the
weights of `AutoencoderKL.from_pretrained("sd1/vae")`, and so the same decode. The Rust test
`an_ldm_vae_checkpoint_decodes_like_its_diffusers_twin` shows our loader gives the same pixels for both files,
and the pipeline parity fixtures tie our diffusers-folder decode to diffusers'.
"""

import os
import subprocess
import sys
import tempfile

import torch
from diffusers import AutoencoderKL


def main():
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        subprocess.run(
            ["cargo", "run", "-q", "-p", "atelier-engine", "--example", "write_tiny", "--", tmp],
            check=True,
            env=env,
        )
        folder = os.path.join(tmp, "sd1", "vae")
        single = os.path.join(tmp, "sd1-vae-ldm.safetensors")
        want = AutoencoderKL.from_pretrained(folder).eval()
        got = AutoencoderKL.from_single_file(single, config=folder, local_files_only=True).eval()
        a, b = want.state_dict(), got.state_dict()
        if sorted(a) != sorted(b):
            sys.exit(f"different tensors: {sorted(set(a) ^ set(b))[:10]}")
        for name, t in a.items():
            if t.shape != b[name].shape or not torch.equal(t, b[name]):
                sys.exit(f"tensor {name} differs")
        if abs(got.config.scaling_factor - want.config.scaling_factor) > 1e-12:
            sys.exit("scaling factors differ")
        z = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            if not torch.equal(want.decode(z).sample, got.decode(z).sample):
                sys.exit("decodes differ")
        print(f"ok: {len(a)} tensors identical, decode identical")


if __name__ == "__main__":
    main()
