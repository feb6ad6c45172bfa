"""Fine-tune defaults shared by the CLI, the Python API and sweeps (no torch import: the CLI reads
them to build ``--help``).

Chosen by measurement (benchmarks/tcp_ablations.py, docs/methods.md "Fine-tune settings"): at rate
0.99, 20 epochs of Adam at 3e-3 (the dense training rate) recover 8-26 points more than at 1e-3
for every method that does not collapse, and the benchmarks use it for all methods.
"""

FINETUNE_EPOCHS = 30
FINETUNE_LR = 3e-3

# --align at compaction (compact, export): keep unit counts at multiples of this (1: as pruned).
# benchmarks/ctf.py --align-compare measures it (docs/compaction.md, "Width alignment").
COMPACT_ALIGN = 1
