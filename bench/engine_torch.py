#!/usr/bin/env python3
"""PyTorch diffusers side of bench/engine.sh: `engine_torch.py <dir> <size> <iters>`.

Loads `<dir>/unet` and `<dir>/vae` (the weights bench_engine wrote) and prints one JSON line with the same
measurements: peak RSS after loading, one UNet step (CFG batch of 2, 77 context tokens) and one VAE decode.
"""
import json
import resource
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel


def main():
    path, size, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(f"{path}/unet").eval()
    vae = AutoencoderKL.from_pretrained(f"{path}/vae").eval()
    load_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lat = size // 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 4, lat, lat), generator=g)
    ctx = torch.randn((2, 77, unet.config.cross_attention_dim), generator=g)
    unet(x, 500.0, encoder_hidden_states=ctx)
    start = time.perf_counter()
    for _ in range(iters):
        unet(x, 500.0, encoder_hidden_states=ctx)
    unet_ms = (time.perf_counter() - start) * 1000 / iters
    z = x[:1] / vae.config.scaling_factor
    vae.decode(z)
    start = time.perf_counter()
    for _ in range(iters):
        vae.decode(z)
    vae_ms = (time.perf_counter() - start) * 1000 / iters
    print(json.dumps({"impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "size": size, "iters": iters, "peak_rss_after_load_mib": peak, "load_s": load_s,
                      "unet_step_ms": unet_ms, "vae_decode_ms": vae_ms}))


if __name__ == "__main__":
    main()
