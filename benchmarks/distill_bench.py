"""The distillation benchmark: what one training step costs, and how close it runs to the card's peak.

For each model size and mode it times one optimizer step of

- ``sft``: plain flow-matching SFT (`pipeline.train.sft.flow_matching_step`);
- ``danceopd``: the on-policy step (`pipeline.train.distill.distill_step`): a no-grad rollout of
  R Euler steps, one query state per sample, a teacher forward, a student forward/backward;
- ``diffusionopd``: the same with all R states queried (K = R, weight 0.5/R^2);
- ``batch1``: the reference implementation's pattern, the DanceOPD step at micro-batch 1 with
  gradient accumulation 4 (eager only);

and reports samples/s, the achieved TFLOP/s (matmul FLOPs counted by torch's FlopCounterMode on
one forward, times 3 for a forward/backward) and MFU against the card's measured bf16 (CUDA) or
fp32 (CPU) matrix-multiply peak, which the same run measures. The DanceOPD step costs R + 4
forward-equivalents per sample against SFT's 3, so its time ratio should be near (R + 4) / 3.

    python benchmarks/distill_bench.py --out benchmarks/results/cpu        # CPU, default size
    python benchmarks/distill_bench.py --sizes S,B --modes eager,compile   # on a GPU

Writes ``<out>.json`` and ``<out>.md``. Random data and weights: the cost of a step does not depend
on them. Steps run under `pipeline.core.compute.autocast` (bf16 on CUDA, float32 on the CPU).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core import backbone, compute  # noqa: E402
from pipeline.core.fields import Cond, ModelField  # noqa: E402
from pipeline.train import distill, sft  # noqa: E402

# size -> (preset, image size, channels, patch, batch on CUDA, batch on the CPU). B is the ~250M model
# on 32x32x16 latents (an SD3 VAE's 256-pixel image), as the card's reference figures.
SIZES = {"S": ("S", 32, 3, 4, 256, 64), "B": ("B", 32, 16, 2, 64, 4)}
TEXT_TOKENS, TEXT_DIM, ROLLOUT = 24, 384, 16


def matmul_peak(device: torch.device, seconds: float = 2.0) -> float:
    """The card's dense matrix-multiply rate in TFLOP/s: bf16 8192^3 on CUDA, float32 1024^3 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / _time(lambda: a @ b, device, seconds, warmup=3) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, seconds: float, warmup: int = 2, min_reps: int = 3) -> float:
    """Mean seconds per call of `fn` over at least `min_reps` calls and `seconds`."""
    for _ in range(warmup):
        fn()
    _sync(device)
    reps, tic = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - tic < seconds:
        fn()
        reps += 1
        _sync(device)
    return (time.perf_counter() - tic) / reps


def batch(n: int, image: int, channels: int, device: torch.device) -> tuple[torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, image, image, generator=gen).clamp(-1, 1)
    cond = Cond(text=torch.randn(n, TEXT_TOKENS, TEXT_DIM, generator=gen), pooled=torch.randn(n, TEXT_DIM, generator=gen),
                source=torch.zeros(n, channels, image, image), route=torch.zeros(n, dtype=torch.long))
    return x, cond


def forward_flops(model, x: torch.Tensor, cond: Cond, device: torch.device) -> float:
    """Matmul FLOPs of one forward over the batch `x`."""
    with torch.no_grad(), compute.autocast(device), FlopCounterMode(display=False) as counter:
        model(x.to(device), torch.full((len(x),), 0.5, device=device), cond.to(device))
    return float(counter.get_total_flops())


def step_runner(kind: str, model, forward, teacher, data, device: torch.device, micro: int, accum: int):
    """A closure running one optimizer step of `kind` (sft | danceopd | diffusionopd) on `micro` x `accum` samples."""
    x, cond = data
    x, cond = x[:micro].to(device), cond[:micro].to(device)  # resident, as the training stages keep it
    null = (torch.zeros(TEXT_TOKENS, TEXT_DIM), torch.zeros(TEXT_DIM))
    if kind == "sft":
        step_fn = sft.flow_matching_step("logit_normal", 0.1, 0.05, null, device)
    else:
        k = 1 if kind == "danceopd" else ROLLOUT
        method = SimpleNamespace(rollout_steps=ROLLOUT, queries=k, query="low" if k == 1 else "uniform",
                                 weighting="mean" if k == 1 else "diffusionopd", states="on_policy")
        step_fn = distill.distill_step(teacher, method, 3.0, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator(device).manual_seed(0)  # noise drawn on the device, as in `fit`

    def run():
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            with compute.autocast(device):
                loss = step_fn(forward, (x, cond), gen)
            (loss / accum).backward()
        opt.step()

    return run


def forward_equivalents(kind: str) -> int:
    """Forward passes per sample of one step: SFT 3 (fwd + bwd); DanceOPD R + 1 + 3; DiffusionOPD R + R + 3R."""
    return {"sft": 3, "danceopd": ROLLOUT + 4, "diffusionopd": 5 * ROLLOUT}[kind]


def bench_size(size: str, modes: list[str], device: torch.device, peak: float, seconds: float,
               on_row=lambda row: None) -> None:
    preset, image, channels, patch, gpu_batch, cpu_batch = SIZES[size]
    batch_size = gpu_batch if device.type == "cuda" else cpu_batch
    torch.manual_seed(0)
    student = backbone.build(preset, patch, image, TEXT_DIM, channels).to(device)
    params = sum(p.numel() for p in student.parameters())
    frozen = copy.deepcopy(student).requires_grad_(False).eval()
    data = batch(batch_size, image, channels, device)
    fwd = forward_flops(student, *data, device) / batch_size  # per sample
    for mode in modes:
        compiled = mode == "compile"
        forward = torch.compile(student) if compiled else student
        teacher = ModelField(torch.compile(frozen) if compiled else frozen)
        if compiled:  # each compile costs tens of seconds: the two steps the goals name
            plan = [("danceopd", batch_size, 1), ("sft", batch_size, 1)]
        else:
            plan = [("sft", batch_size, 1), ("danceopd", batch_size, 1), ("diffusionopd", max(1, batch_size // 8), 1),
                    ("batch1", 1, 4)]
        for kind, micro, accum in plan:
            step_kind = "danceopd" if kind == "batch1" else kind
            row = {"size": size, "params_m": round(params / 1e6, 1), "mode": mode, "step": kind,
                   "micro_batch": micro, "grad_accum": accum}
            try:
                sec = _time(step_runner(step_kind, student, forward, teacher, data, device, micro, accum), device, seconds)
                samples = micro * accum
                tflops = forward_equivalents(step_kind) * fwd * samples / sec / 1e12
                row |= {"samples_per_s": round(samples / sec, 3), "ms_per_step": round(sec * 1e3, 2),
                        "tflops": round(tflops, 2), "mfu": round(tflops / peak, 4)}
            except Exception as err:  # an out-of-memory or compile failure is a row, not the end of the run
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                traceback.print_exc()
            print(json.dumps(row), flush=True)
            on_row(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def summary(rows: list[dict]) -> dict:
    """The ratios the issue asks for, per size: DanceOPD/SFT time per sample vs (R + 4) / 3, and DanceOPD vs batch-1."""
    out = {}
    for size in dict.fromkeys(r["size"] for r in rows):
        get = {(r["mode"], r["step"]): r.get("samples_per_s") for r in rows if r["size"] == size}
        s = {}
        for mode in ("eager", "compile"):
            if get.get((mode, "sft")) and get.get((mode, "danceopd")):
                s[f"{mode}_danceopd_over_sft_time"] = round(get[(mode, "sft")] / get[(mode, "danceopd")], 2)
        s["flop_ratio"] = round(forward_equivalents("danceopd") / forward_equivalents("sft"), 2)
        best = max((v for (m, k), v in get.items() if k == "danceopd" and v), default=None)
        if best and get.get(("eager", "batch1")):
            s["danceopd_over_batch1"] = round(best / get[("eager", "batch1")], 1)
        out[size] = s
    return out


def markdown(result: dict) -> str:
    lines = [f"# Distillation benchmark: {result['device_name']}", "",
             f"Matrix-multiply peak measured: {result['peak_tflops']:.1f} TFLOP/s ({result['peak_dtype']}); "
             f"rollout R = {ROLLOUT}; torch {result['torch']}.", "",
             "| size | params (M) | mode | step | micro-batch x accum | samples/s | ms/step | TFLOP/s | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        cells = ([r["samples_per_s"], r["ms_per_step"], r["tflops"], f"{100 * r['mfu']:.1f}%"] if "error" not in r
                 else [r["error"], "", "", ""])
        lines.append(f"| {r['size']} | {r['params_m']} | {r['mode']} | {r['step']} | {r['micro_batch']} x "
                     f"{r['grad_accum']} | " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Ratios: " + json.dumps(result["summary"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="S")
    parser.add_argument("--modes", default="eager")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (after warm-up)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench"))
    args = parser.parse_args()
    device = compute.device_for(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_peak(device)
    rows = []

    def keep(row: dict) -> None:  # the files are rewritten after each row: a run cut short keeps its rows
        rows.append(row)
        write(args.out, device, peak, rows)

    for size in args.sizes.split(","):
        bench_size(size, args.modes.split(","), device, peak, args.seconds, on_row=keep)
    print(markdown(json.loads(args.out.with_suffix(".json").read_text())))


def write(out: Path, device: torch.device, peak: float, rows: list[dict]) -> None:
    result = {"device": device.type, "torch": torch.__version__, "peak_tflops": round(peak, 1),
              "peak_dtype": "bf16" if device.type == "cuda" else "float32",
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "rows": rows, "summary": summary(rows)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
