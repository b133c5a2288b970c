"""Started by torchrun in tests: train a scratch-preset config and stop after N steps.

torchrun --nproc_per_node=2 tests/ddp_stop_after.py OUT CACHE STEPS KEY=VALUE ...
"""

import sys

from cifar100.config import apply_overrides, load_preset
from cifar100.engine.train import train

out, cache, steps, *settings = sys.argv[1:]
cfg = apply_overrides(load_preset("scratch"), settings)
result = train(cfg, out=out, cache_dir=cache, progress=False, stop_after_steps=int(steps))
print(f"stopped: {result.stopped} at {result.saved_at}", flush=True)
