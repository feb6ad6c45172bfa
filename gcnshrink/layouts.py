"""Skeleton layouts: joint counts, edge lists, centre joints and the adjacency built from them.

Edge lists are 0-based. Sources: the public ST-GCN / 2s-AGCN / pyskl / MediaPipe / FPHA / SBU
documentation, summarised in docs/formats.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gcnshrink.errors import GcnshrinkError


@dataclass(frozen=True)
class Layout:
    """A skeleton: ``num_joints`` joints per person, ``edges`` (child, parent) pairs, a centre joint."""

    name: str
    num_joints: int
    edges: tuple[tuple[int, int], ...]
    center: int
    persons: int = 1

    def __post_init__(self) -> None:
        for a, b in self.edges:
            if not (0 <= a < self.num_joints and 0 <= b < self.num_joints):
                raise GcnshrinkError(
                    f"layout {self.name!r}: edge ({a}, {b}) names a joint outside 0..{self.num_joints - 1}"
                )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_joints": self.num_joints,
            "edges": [list(e) for e in self.edges],
            "center": self.center,
            "persons": self.persons,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(
            name=str(d["name"]),
            num_joints=int(d["num_joints"]),
            edges=tuple((int(a), int(b)) for a, b in d["edges"]),
            center=int(d["center"]),
            persons=int(d.get("persons", 1)),
        )

    def adjacency(self, self_loops: bool = True) -> np.ndarray:
        """Symmetric 0/1 adjacency (V, V) of one person's skeleton."""
        a = np.zeros((self.num_joints, self.num_joints), dtype=np.float32)
        for i, j in self.edges:
            a[i, j] = a[j, i] = 1.0
        if self_loops:
            a += np.eye(self.num_joints, dtype=np.float32)
        return a

    def hop_distance(self) -> np.ndarray:
        """Hop distance between joints (inf where disconnected)."""
        v = self.num_joints
        adj = self.adjacency(self_loops=False) > 0
        dist = np.full((v, v), np.inf)
        np.fill_diagonal(dist, 0)
        reach = np.eye(v, dtype=bool)
        frontier = np.eye(v, dtype=bool)
        hop = 0
        while frontier.any():
            hop += 1
            nxt = (frontier.astype(np.int64) @ adj.astype(np.int64)) > 0
            nxt &= ~reach
            dist[nxt] = hop
            reach |= nxt
            frontier = nxt
        return dist

    def spatial_partitions(self) -> np.ndarray:
        """ST-GCN's "spatial" partitioning (K=3, max_hop 1) of the column-normalised adjacency.

        Partition 0 holds the root itself, 1 the neighbours at least as far from the centre as the
        root (centrifugal and same-distance), 2 the neighbours nearer to the centre (centripetal).
        """
        v = self.num_joints
        hop = self.hop_distance()
        adj = (hop <= 1).astype(np.float32)
        degree = adj.sum(axis=0)
        norm = adj / np.where(degree > 0, degree, 1.0)[None, :]  # A · D⁻¹ (column-normalised)
        to_center = hop[:, self.center]
        parts = np.zeros((3, v, v), dtype=np.float32)
        for i in range(v):
            for j in range(v):
                if hop[j, i] > 1:
                    continue
                if i == j:
                    parts[0, j, i] = norm[j, i]
                elif to_center[j] >= to_center[i]:
                    parts[1, j, i] = norm[j, i]
                else:
                    parts[2, j, i] = norm[j, i]
        return parts


def _hand_mediapipe() -> tuple[tuple[int, int], ...]:
    edges = []
    for finger in range(5):
        base = 1 + 4 * finger
        edges.append((base, 0))
        edges += [(base + k + 1, base + k) for k in range(3)]
    return tuple(edges)


LAYOUTS: dict[str, Layout] = {
    "hand21": Layout("hand21", 21, _hand_mediapipe(), center=0),
    "fpha21": Layout(
        "fpha21",
        21,
        (
            (0, 1),
            (1, 6),
            (6, 7),
            (7, 8),
            (0, 2),
            (2, 9),
            (9, 10),
            (10, 11),
            (0, 3),
            (3, 12),
            (12, 13),
            (13, 14),
            (0, 4),
            (4, 15),
            (15, 16),
            (16, 17),
            (0, 5),
            (5, 18),
            (18, 19),
            (19, 20),
        ),
        center=0,
    ),
    "sbu15": Layout(
        "sbu15",
        15,
        (
            (0, 1),
            (1, 2),
            (1, 3),
            (3, 4),
            (4, 5),
            (1, 6),
            (6, 7),
            (7, 8),
            (2, 9),
            (9, 10),
            (10, 11),
            (2, 12),
            (12, 13),
            (13, 14),
        ),
        center=2,
        persons=2,
    ),
    "ntu25": Layout(
        "ntu25",
        25,
        tuple(
            (a - 1, b - 1)
            for a, b in (
                (1, 2),
                (2, 21),
                (3, 21),
                (4, 3),
                (5, 21),
                (6, 5),
                (7, 6),
                (8, 7),
                (9, 21),
                (10, 9),
                (11, 10),
                (12, 11),
                (13, 1),
                (14, 13),
                (15, 14),
                (16, 15),
                (17, 1),
                (18, 17),
                (19, 18),
                (20, 19),
                (22, 23),
                (23, 8),
                (24, 25),
                (25, 12),
            )
        ),
        center=20,
        persons=2,
    ),
    "coco17": Layout(
        "coco17",
        17,
        (
            (15, 13),
            (13, 11),
            (16, 14),
            (14, 12),
            (11, 5),
            (12, 6),
            (9, 7),
            (7, 5),
            (10, 8),
            (8, 6),
            (5, 0),
            (6, 0),
            (1, 0),
            (3, 1),
            (2, 0),
            (4, 2),
        ),
        center=0,
        persons=2,
    ),
    "openpose18": Layout(
        "openpose18",
        18,
        (
            (4, 3),
            (3, 2),
            (7, 6),
            (6, 5),
            (13, 12),
            (12, 11),
            (10, 9),
            (9, 8),
            (11, 5),
            (8, 2),
            (5, 1),
            (2, 1),
            (0, 1),
            (15, 0),
            (14, 0),
            (17, 15),
            (16, 14),
        ),
        center=1,
        persons=2,
    ),
}


# the layout a bare joint count most often means, for checkpoints and data that name none
LAYOUT_BY_JOINTS = {25: "ntu25", 21: "hand21", 18: "openpose18", 17: "coco17", 15: "sbu15"}


def get_layout(name: str) -> Layout:
    try:
        return LAYOUTS[name]
    except KeyError:
        raise GcnshrinkError(
            f"unknown skeleton layout {name!r}; known: {', '.join(sorted(LAYOUTS))}"
        ) from None


def layout_from_edges(
    edges, num_joints: int, persons: int = 1, name: str = "custom", center: int = 0
) -> Layout:
    """A layout from an edge list supplied with the data (an (E, 2) integer array)."""
    arr = np.asarray(edges)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise GcnshrinkError(f"edge list must have shape (E, 2), got {arr.shape}")
    return Layout(name, num_joints, tuple((int(a), int(b)) for a, b in arr), center, persons)
