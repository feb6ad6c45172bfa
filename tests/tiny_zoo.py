"""Tiny zoo models with their default initialisation, for tests that parametrize over builders
(``@pytest.mark.parametrize("build", [gcn, stgcn])``); conftest's ``make_model`` fixture gives
randomized ones instead."""

import torch

from gcnshrink.layouts import get_layout
from gcnshrink.models import create_model


def tiny_gcn(seed: int = 0, num_classes: int = 5):
    torch.manual_seed(seed)
    return create_model(
        "gcn",
        num_classes=num_classes,
        layout=get_layout("hand21"),
        heads=2,
        head_width=8,
        key_width=4,
        hidden=16,
    )


def tiny_stgcn(seed: int = 0, num_classes: int = 5):
    torch.manual_seed(seed)
    return create_model("stgcn", num_classes=num_classes, layout=get_layout("sbu15"), base_width=4)
