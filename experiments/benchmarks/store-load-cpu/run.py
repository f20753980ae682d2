"""The device store's load on this CPU host, one reading thread against LOAD_THREADS, in one run.

    .venv/bin/python experiments/benchmarks/store-load-cpu/run.py [--size 128] [--data DIR]

It builds (once) a synthetic world of 2,000 outfits and its product store at --size px, then times
``ResidentPixels.load`` onto the CPU (the host-memory branch; a GPU run measures the staged copy in
``bench/gpu.sh``'s catalog part) with benchmarks/gpu.py's ``store_load_threads``. The result is
printed and written next to this file as results.json.
"""

import argparse
import json
from pathlib import Path

from ctl_lightning.benchmarks.gpu import store_load_threads
from ctl_lightning.benchmarks.machine import machine_info
from ctl_lightning.data.sources import SyntheticCtl

parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, default=128)
parser.add_argument("--data", type=Path, default=Path(".bench-data/store-load"))
args = parser.parse_args()
store = SyntheticCtl(args.data, seed=0, outfits=2000, scenes=10).open_store(args.size)
result = {"machine": machine_info(), "products": len(store), "size": args.size, **store_load_threads(store, gpu=False, repeats=5)}
print(json.dumps(result, indent=1))
(Path(__file__).parent / "results.json").write_text(json.dumps(result, indent=1) + "\n")
