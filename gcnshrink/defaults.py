"""Fine-tune defaults shared by the CLI, the Python API and sweeps (no torch import: the CLI reads
them to build ``--help``).

Chosen by measurement (docs/methods.md "Fine-tune settings"): Adam at 1e-2, above the dense training
rate of 3e-3, because at high rates the fine-tune retrains a small network from a start near chance
rather than adjusts a large one. At 0.99 1e-3 -> 3e-3 gained 8-26 points for every method that does
not collapse (benchmarks/tcp_ablations.py); 3e-3 -> 1e-2 gained 10-25 points at 0.995-0.998 and
left 0.9 within seed noise (benchmarks/tcp_extreme.py). The benchmarks use it for all methods.
"""

FINETUNE_EPOCHS = 30
FINETUNE_LR = 1e-2

# --align at compaction (compact, export): keep unit counts at multiples of this (1: as pruned).
# benchmarks/ctf.py --align-compare measures it (docs/compaction.md, "Width alignment").
COMPACT_ALIGN = 1
