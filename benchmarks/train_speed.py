"""Benchmark: parameters, SFT samples/s and no-grad forward samples/s of a backbone on this machine.

    python -m benchmarks.train_speed                 # the params.yaml backbone at train.batch_size
    python -m benchmarks.train_speed --preset M --patch-size 2 --batch-size 32
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline import config
from pipeline.core import backbone, flow
from pipeline.core.fields import Cond


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    tic = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - tic) / repeats


def main() -> None:
    params = config.load()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default=params.model.preset)
    parser.add_argument("--patch-size", type=int, default=params.model.patch_size)
    parser.add_argument("--batch-size", type=int, default=params.train.batch_size)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    size, b = params.world.resolution, args.batch_size
    model = backbone.build(args.preset, args.patch_size, size, 384)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, noise = torch.randn(b, 3, size, size), torch.randn(b, 3, size, size)
    cond = Cond(torch.randn(b, params.text.max_tokens, 384), torch.randn(b, 384), torch.randn(b, 3, size, size))

    def sft_step():
        t = flow.sample_t(b)
        loss = (model(flow.interpolate(x, noise, t), t, cond) - (noise - x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def forward():
        model(x, torch.rand(b), cond)

    step_s, fwd_s = timed(sft_step, args.repeats), timed(forward, args.repeats)
    print(f"backbone {args.preset} patch {args.patch_size}: {backbone.param_count(model) / 1e6:.2f}M params, "
          f"{torch.get_num_threads()} threads, batch {b}")
    print(f"  SFT step   {step_s:.3f} s  = {b / step_s:7.0f} samples/s")
    print(f"  forward    {fwd_s:.3f} s  = {b / fwd_s:7.0f} samples/s (no grad)")


if __name__ == "__main__":
    main()
