"""Trace one tcp fine-tune at an extreme rate: where the budget goes and how training proceeds.

Prints, for the cached dense ``gcn`` of one dataset and seed (``benchmarks/tcp_extreme.py --cache``
makes it): the kept weights per tensor and the live units per hidden space of the starting
projection, its validation accuracy before any fine-tune, the validation accuracy and training loss
of every epoch, the same structure for the delivered mask and for the mask training ended with,
how much of the delivered mask the trained mask covers (whether the shipped projection and the
training-time masks disagree), and the test accuracy of the selected epoch.

    python benchmarks/tcp_extreme_trace.py --data synthetic:hands --seed 0 --rate 0.999 \\
        --options '{"steering": 1.0}' --cache /tmp/tcp_extreme_cache

A diagnosis aid: nothing is written, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mrmp import dense_model  # noqa: E402

from gcnshrink.data import load_data  # noqa: E402
from gcnshrink.defaults import FINETUNE_LR  # noqa: E402
from gcnshrink.graph.propagation import topology_summary  # noqa: E402
from gcnshrink.pruning import PruneSpec, create_method, delivering  # noqa: E402
from gcnshrink.train import TrainConfig, evaluate, fit  # noqa: E402


def describe(graph, masks: dict, tag: str) -> None:
    summary = topology_summary(graph, masks)
    kept = {k.removesuffix(".weight"): v["kept"] for k, v in summary["tensors"].items()}
    alive = {k: v["width"] - v["dead"] for k, v in summary["spaces"].items()}
    print(f"  [{tag}] kept {sum(kept.values())} {kept}")
    print(f"  [{tag}] live units {alive}")


@torch.no_grad()
def varying(model, masks: dict, data) -> dict[str, int]:
    """Per hidden gcn space after a ReLU: live units whose activation is not constant over a
    training batch (a unit stuck at 0 or on its bias passes no information on)."""
    graph = model.unit_graph()
    summary = topology_summary(graph, masks)["spaces"]
    spaces = {f"blocks.{b}": f"block{b}.out" for b in range(len(model.blocks))}
    spaces["fc_act"] = "hidden"
    acts = {}
    hooks = [
        module.register_forward_hook(lambda m, i, o, n=name: acts.__setitem__(n, o))
        for name, module in model.named_modules()
        if name in spaces
    ]
    model.eval()
    with delivering(model, masks):
        model(data.x_train[:256])
    model.train()
    for h in hooks:
        h.remove()
    out = {}
    for name, space in spaces.items():
        a = acts[name].reshape(-1, acts[name].shape[-1])
        varies = int((a.std(dim=0) > 1e-6).sum())
        out[space] = f"{varies} of {summary[space]['width'] - summary[space]['dead']} live"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic:hands")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.999)
    parser.add_argument("--method", default="tcp")
    parser.add_argument("--options", default="{}", help="method options, as JSON")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--cache", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = json.loads(args.options)
    data = load_data(args.data, seed=args.seed)
    ckpt, dense = dense_model(args.data, args.seed, args.epochs, data, args.cache)
    model = ckpt.build_model().train()
    graph = model.unit_graph()
    torch.manual_seed(args.seed)
    method = create_method(
        args.method, PruneSpec((args.rate,), allow_collapse=True), options, seed=args.seed
    )
    method.attach(model, graph)
    print(f"{args.data} seed {args.seed} rate {args.rate} {args.method} {options} "
          f"budget {method.budget(args.rate)} dense {dense['accuracy']:.3f}")  # fmt: skip
    start = method.masks_at(args.rate)
    describe(graph, start, "start")
    with delivering(model, start):
        before = evaluate(model, data.x_val, data.y_val, data.num_classes)["accuracy"]
    print(f"  validation before the fine-tune {before:.3f}")
    print(
        f"  live units whose output varies over 256 training samples {varying(model, start, data)}"
    )
    if args.finetune == 0:
        return
    config = TrainConfig(epochs=args.finetune, lr=args.lr, seed=args.seed, progress=False)
    result = fit(model, data, config, method)
    val = [r["val_accuracy"] for r in result.history]
    print("  validation per epoch", [None if v is None else round(v, 3) for v in val])
    print("  training loss per epoch", [round(r["loss"], 2) for r in result.history])
    delivered = result.masks[args.rate]
    describe(graph, delivered, "delivered")
    if hasattr(method, "controller"):
        trained = {k: v.detach() > 0 for k, v in method.controller.compute().items()}
        describe(graph, trained, "trained")
        overlap = sum(int((trained[k] & delivered[k]).sum()) for k in delivered)
        print(f"  delivered entries inside the trained mask: {overlap}")
    with delivering(model, delivered):
        test = evaluate(model, data.x_test, data.y_test, data.num_classes)["accuracy"]
    print(f"  best epoch {result.best_epoch}: validation {result.best_val_accuracy:.3f}, "
          f"test {test:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
