"""Checks of the values users give a training run: epochs, batch size, learning rate, seed and
device, as flags of ``train``, ``prune``, ``sweep`` and ``demo`` or keywords of ``gcnshrink.api``,
and the comma-separated lists of the command line (``--rates``, ``--methods``, ``--seeds``).

Each bad value is one :class:`~gcnshrink.errors.GcnshrinkError` naming the flag, raised before
any data is loaded or any model is built (a batch size of 0 used to fail after loading everything,
a negative one trained nothing and succeeded, a NaN learning rate was a traceback).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from gcnshrink.errors import GcnshrinkError

MAX_SEED = 2**63 - 1  # what torch, numpy and Python's random all accept


def check_int(flag: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GcnshrinkError(f"{flag} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise GcnshrinkError(f"{flag} must be {bounds}, got {value}")
    return value


def check_lr(value: object, flag: str = "--lr") -> float:
    """A finite, positive learning rate."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GcnshrinkError(f"{flag} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise GcnshrinkError(f"{flag} must be a finite number above 0, got {value!r}")
    return float(value)


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """None (pick one), cpu, or a device this machine has (cuda, cuda:N, mps)."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GcnshrinkError(f"{flag} {device!r} is not a device; use cpu or cuda") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise GcnshrinkError(f"{flag} {device}: this machine has no CUDA device; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise GcnshrinkError(
                f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        return device
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return device
    raise GcnshrinkError(f"{flag} {device!r}: gcnshrink trains on cpu or cuda")


def check_training(
    *,
    epochs: object,
    batch_size: object,
    lr: object,
    seed: object,
    device: str | None,
    min_epochs: int = 1,
) -> None:
    """Every training argument at once (``min_epochs`` is 0 where no training is allowed)."""
    check_int("--epochs", epochs, min_epochs)
    check_int("--batch-size", batch_size, 1)
    check_lr(lr)
    check_int("--seed", seed, 0, MAX_SEED)
    check_device(device)


def parse_list(flag: str, text: str, kind: type = str) -> list:
    """A comma-separated command-line list (``--rates 0.5,0.9``): at least one value, no empty
    entry and no value twice. An empty list used to be taken as no list at all (``prune --method
    mrmp --rates ""`` trained a single rate, ``extract --rates ""`` wrote nothing and succeeded)."""
    entries = [t.strip() for t in text.split(",")]
    if not any(entries):
        raise GcnshrinkError(f"{flag} names no value; give a comma-separated list")
    if not all(entries):
        raise GcnshrinkError(f"{flag} {text!r} has an empty entry")
    try:
        values = [kind(t) for t in entries]
    except ValueError:
        noun = {float: "numbers", int: "integers"}.get(kind, "values")
        raise GcnshrinkError(
            f"{flag} must be a comma-separated list of {noun}, got {text!r}"
        ) from None
    return check_unique(flag, values)


def check_unique(flag: str, values: Iterable[object]) -> list:
    """A list given on the command line (``--rates 0.9,0.9``) must not repeat a value."""
    values = list(values)
    seen: set = set()
    for value in values:
        if value in seen:
            raise GcnshrinkError(f"{flag} lists {value!r} twice")
        seen.add(value)
    return values
