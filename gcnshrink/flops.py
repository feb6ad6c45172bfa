"""FLOPs of one forward pass, counted by ``torch.utils.flop_counter.FlopCounterMode``.

One place for the counter's set-up (evaluation mode, one sample, no gradients, the model's
device), shared by :mod:`gcnshrink.measure` (per operator, for reports) and
:mod:`gcnshrink.pruning.ctf` (per module, to price a weight). A multiply-add is 2 FLOPs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def forward_flop_counts(model: torch.nn.Module, frames: int) -> dict[str, dict[str, int]]:
    """FLOPs of one forward pass on one sample of ``frames`` frames, per module and aten operator.

    Keys are ``"Global"`` (the whole model) and the dotted module names, as the counter reports
    them without its leading model-class prefix; values map an aten operator (``convolution``,
    ``bmm``, ``addmm``, ...) to its FLOPs. The model's training mode is restored afterwards.
    """
    device = next(model.parameters()).device
    example = model.example_input(1, frames).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
    out: dict[str, dict[str, int]] = {}
    for key, ops in counter.get_flop_counts().items():
        name = key if key == "Global" else key.split(".", 1)[1] if "." in key else None
        if name is None:
            continue  # the model itself under its class name: the same numbers as "Global"
        out[name] = {str(op).split(".")[-1]: int(n) for op, n in ops.items()}
    return out
