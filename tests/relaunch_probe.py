"""A stand-in stage for tests/test_distributed.py: relaunches itself as `nproc` processes
(`compute.relaunch`), joins the group (`compute.setup`) and writes what each process sees; with
a third argument `fit`, then trains the test's fixed three steps in that group."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist

from pipeline.core import compute

if __name__ == "__main__":
    out, nproc = Path(sys.argv[1]), int(sys.argv[2])
    params = SimpleNamespace(device="cpu", threads=1, compile=False, nproc=nproc)
    compute.relaunch(params)
    compute.setup(params)
    rank, size = compute.world()
    total = [rank + 1]
    if size > 1:
        gathered = [None] * size
        dist.all_gather_object(gathered, rank + 1)
        total = gathered
    (out / f"rank{rank}.json").write_text(json.dumps({"size": size, "main": compute.is_main(), "sum": sum(total),
                                                      "argv": sys.argv[1:]}))
    if sys.argv[3:] == ["fit"]:
        from tests.test_distributed import train_fixed

        train_fixed(rank, size, str(out))
