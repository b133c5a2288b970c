"""An exponential moving average of the weights, evaluated beside the raw ones."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """A copy of `model` whose parameters trail it: ema = d * ema + (1 - d) * current.

    The decay ramps up as (1 + n) / (10 + n) until it reaches `decay` (as TensorFlow's
    ExponentialMovingAverage with num_updates does), so a short run's average is not stuck
    near the initial weights. Buffers (batch-norm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
