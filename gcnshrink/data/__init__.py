"""Skeleton datasets: readers for users' files, safe unpickling, and built-in synthetic data.

``load_data(spec)`` is the one entry point; it returns a SkeletonData. Spec strings and file
formats are described in load_data's docstring and docs/formats.md.
"""

from gcnshrink.data.dataset import SkeletonData, load_data

__all__ = ["SkeletonData", "load_data"]
