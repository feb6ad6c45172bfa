"""Fine-tune defaults shared by the CLI, the Python API and sweeps (no torch import: the CLI reads
them to build ``--help``).

Chosen by measurement (docs/methods.md, "Fine-tune settings"): with Adam at 1e-3, 20 epochs were
too few for any method to recover at 0.99; 3e-3 (the dense training rate) recovered every method
and is what the benchmarks use.
"""

FINETUNE_EPOCHS = 30
FINETUNE_LR = 3e-3
