"""Byte-mutated files of every kind gcnshrink reads are read or refused in one line, nothing else.

A few hundred seeded cases (``gcnshrink.fuzz``): a ``.pt`` checkpoint, dense and sparse
safetensors exports, an ONNX model, an ``.npz`` dataset, a pyskl ``.pkl``, an ST-GCN folder and an
SBU folder, each corrupted by flipped bytes, truncation, insertions, runs, copied blocks, extreme
integers and (zips) corrupted members with valid checksums, under an address-space cap so that an
allocation bomb fails here instead of in the OOM killer. ``benchmarks/fuzz_loaders.py`` is the
long run of the same loop.
"""

from __future__ import annotations

import pytest

from gcnshrink.fuzz import KINDS, fuzz, seed_files


def test_seed_files_are_read(tmp_path):
    """The fuzz starts from valid files: each loader reads its unmutated seed."""
    from gcnshrink.fuzz import LOADERS

    for kind, path in seed_files(tmp_path).items():
        LOADERS[kind](path)


@pytest.mark.parametrize("seed", [0])
def test_mutated_files_are_read_or_refused_in_one_line(seed, tmp_path):
    report = fuzz(tmp_path, cases=20, seed=seed)
    assert report.unclean == [], "\n".join(report.unclean)
    assert set(report.counts) == set(KINDS)
    for kind, counts in report.counts.items():
        assert counts["refused"] > 0, (kind, counts)  # the mutations did something
    assert sum(c["read"] for c in report.counts.values()) > 0, report.summary()
