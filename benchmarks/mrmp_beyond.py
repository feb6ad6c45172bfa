"""Why ``mrmp --beyond consistent`` projects only past the trained rates: one MRMP training per
seed, extracted at every rate twice, with its magnitude masks (``--beyond magnitude``) and with
their exact consistent projection (what ``--beyond consistent`` does past the highest trained
rate), test accuracy of both and the weights the magnitude masks leave on units cut off from the
input or the output.

    python benchmarks/mrmp_beyond.py --datasets synthetic:hands --finetune 20 --cache DIR
    python benchmarks/mrmp_beyond.py --datasets synthetic:sbu --finetune 60 --cache DIR

At a trained rate the projected network is not the one the training used (the shipped extraction
there is the magnitude one); the columns show what the projection would do at every rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mrmp import dense_model  # noqa: E402

from gcnshrink import api  # noqa: E402
from gcnshrink.data import load_data  # noqa: E402
from gcnshrink.graph import masks_from_weights, topology_summary  # noqa: E402
from gcnshrink.graph.projection import consistent_budget_masks  # noqa: E402
from gcnshrink.pruning import bake  # noqa: E402
from gcnshrink.pruning.mrmp import mask_first_scores  # noqa: E402
from gcnshrink.train import evaluate  # noqa: E402


def projected(latent, graph, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The exact consistent projection of ``masks`` (over the tensors with a zero), as ``--beyond
    consistent`` computes it past the highest trained rate."""
    weights = dict(latent.named_parameters())
    scope = {n: weights[n] for n, m in masks.items() if n in weights and not bool(m.all())}
    scores = mask_first_scores(scope, masks)
    whole = {n: torch.ones_like(m) for n, m in masks.items() if n not in scope}
    budget = sum(int(masks[n].sum()) for n in scope)
    return consistent_budget_masks(graph, scores, budget, dense_masks=whole)


def run(args) -> dict:
    rates = [float(r) for r in args.rates.split(",")]
    extract_at = [float(r) for r in args.extract.split(",")]
    records = []
    for spec in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            data = load_data(spec, seed=seed)
            dense, _ = dense_model(spec, seed, args.epochs, data, args.cache)
            multi = api.prune(
                dense, data, method="mrmp", rates=rates, epochs=args.finetune, lr=args.lr,
                seed=seed, progress=False, allow_collapse=True, beyond="magnitude",
            ).checkpoint  # fmt: skip
            latent = multi.build_model().eval()
            graph = latent.unit_graph()
            for rate in extract_at:
                extracted = api.extract(multi, rate).model.eval()
                masks = masks_from_weights(graph, dict(extracted.named_parameters()))
                consistent = bake(multi.build_model().eval(), projected(latent, graph, masks))
                record = {
                    "data": spec,
                    "seed": seed,
                    "rate": rate,
                    "kept": int(sum(int(m.sum()) for m in masks.values())),
                    "inconsistent": topology_summary(graph, masks)["inconsistent_connections"],
                    "magnitude": evaluate(extracted, data.x_test, data.y_test, data.num_classes)[
                        "accuracy"
                    ],
                    "consistent": evaluate(
                        consistent.eval(), data.x_test, data.y_test, data.num_classes
                    )["accuracy"],
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    return {"args": vars(args), "records": records}


def render(result: dict) -> str:
    a = result["args"]
    lines = [
        f"Command: `python benchmarks/mrmp_beyond.py --datasets {a['datasets']} --seeds "
        f"{a['seeds']} --rates {a['rates']} --extract {a['extract']} --finetune {a['finetune']} "
        f"--lr {a['lr']:g} --epochs {a['epochs']}`",
        "",
        "One mrmp training per seed (trained rates above, `--beyond magnitude`), extracted at each "
        "rate with its magnitude masks and with their exact consistent projection. Test accuracy, "
        "mean over seeds; Δ: projection − magnitude, mean (min … max) over seeds; dead: kept "
        "weights on units cut off from the input or the output (inconsistent connections) in "
        "the magnitude masks, mean share.",
    ]
    for spec in dict.fromkeys(r["data"] for r in result["records"]):
        lines += ["", f"### {spec}", "", "| rate | magnitude | projected | Δ (pp) | dead |"]
        lines.append("|---|---|---|---|---|")
        mine = [r for r in result["records"] if r["data"] == spec]
        for rate in dict.fromkeys(r["rate"] for r in mine):
            rows = [r for r in mine if r["rate"] == rate]
            deltas = [100 * (r["consistent"] - r["magnitude"]) for r in rows]
            dead = statistics.mean(r["inconsistent"] / max(r["kept"], 1) for r in rows)
            lines.append(
                f"| {rate:g} | {100 * statistics.mean(r['magnitude'] for r in rows):.1f}% | "
                f"{100 * statistics.mean(r['consistent'] for r in rows):.1f}% | "
                f"{statistics.mean(deltas):+.1f} ({min(deltas):+.1f} … {max(deltas):+.1f}) | "
                f"{100 * dead:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="synthetic:hands")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rates", default="0.5,0.9,0.95,0.99", help="trained rates")
    parser.add_argument("--extract", default="0.95,0.97,0.985,0.99,0.995,0.998")
    parser.add_argument("--epochs", type=int, default=150, help="dense training epochs")
    parser.add_argument("--finetune", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", default=None, help="folder that keeps the dense models")
    parser.add_argument("--out", default="benchmarks/results/mrmp_beyond")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
