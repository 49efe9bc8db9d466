"""Group bookkeeping shared by splitting and the audit: one union-find, one way to join
sample groups by keys (given group ids, identical bytes, duplicates, DICOM studies)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


class UnionFind:
    """Disjoint sets over ``0..n-1``; the smaller index becomes the root."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def join_by_key(self, keys: Iterable[tuple[int, str]]) -> None:
        """Union every pair of indices that share a key."""
        first: dict[str, int] = {}
        for i, key in keys:
            self.union(i, first.setdefault(key, i))

    def components(self) -> list[list[int]]:
        """Members of each set, in index order."""
        members: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            members[self.find(i)].append(i)
        return list(members.values())


def merge_groups(samples: list[Any], groups: Mapping[str, str]) -> None:
    """Join each sample's ``group`` with ``groups[str(sample.path)]`` (in place).

    A merged group is named by its smallest given id, else its smallest extra id.
    """
    uf = UnionFind(len(samples))
    uf.join_by_key((i, "given:" + s.group) for i, s in enumerate(samples) if s.group is not None)
    uf.join_by_key((i, "extra:" + groups[str(s.path)]) for i, s in enumerate(samples) if str(s.path) in groups)
    for idx in uf.components():
        given = sorted({samples[i].group for i in idx if samples[i].group is not None})
        extra = sorted({groups[str(samples[i].path)] for i in idx if str(samples[i].path) in groups})
        name = given[0] if given else (extra[0] if extra else None)
        if name is not None:
            for i in idx:
                samples[i].group = name
