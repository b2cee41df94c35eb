"""Review: the archive's duplicate groups and the day's intake report, with the reviewers' decisions applied.

The duplicate pairs are found once per server (the two stages of ``skimgfeat
duplicates``: CNN candidates, then the copy check) and grouped as the command groups
them; decisions are applied at every look, so a pair decided "not the same" leaves its
group at once, and a group whose every pair is decided is no longer waiting.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pandas as pd

from ..matching.copy_check import COPY
from ..matching.duplicates import duplicate_groups, duplicate_pairs
from ..schema import IMAGE_PATH
from ..storage.decisions import NOT_SAME, SAME, honour_decisions, pair_key
from .source import ArchiveSource


@dataclass
class Group:
    """One group of copies: its members and its pairs, each with the decision in force ("" if none)."""

    number: int
    members: list[str]
    pairs: list[dict]

    @property
    def waiting(self) -> bool:
        """Whether some pair of the group has no decision yet."""
        return any(not pair["decision"] for pair in self.pairs)

    def as_dict(self) -> dict:
        return {"group": self.number, "members": self.members, "pairs": self.pairs, "waiting": self.waiting}


class Review:
    """The groups and report of one archive, for the review pages and their API."""

    def __init__(self, source: ArchiveSource) -> None:
        self.source = source
        self._pairs: pd.DataFrame | None = None
        self._lock = threading.Lock()

    def duplicate_pairs(self) -> pd.DataFrame:
        """Every candidate pair of the archive with the copy check's verdict (found once)."""
        with self._lock:
            if self._pairs is None:
                self._pairs = duplicate_pairs(self.source.index, copy_check=self.source.hashes or True)
            return self._pairs

    def groups(self) -> list[Group]:
        """The duplicate groups as ``skimgfeat duplicates`` now reports them, decisions honoured."""
        pairs = honour_decisions(self.duplicate_pairs(), self.source.decisions, same_verdict=COPY, found=COPY)
        if "decision" not in pairs.columns:
            pairs = pairs.assign(decision="")
        copies = pairs[pairs["verdict"] == COPY]
        grouped = duplicate_groups(copies, order=self.source.index.names)
        group_of = dict(zip(grouped[IMAGE_PATH], grouped["group"]))
        members: dict[int, list[str]] = {}
        for name, number in zip(grouped[IMAGE_PATH], grouped["group"]):
            members.setdefault(int(number), []).append(str(name))
        pairs_of: dict[int, list[dict]] = {number: [] for number in members}
        for row in copies.itertuples(index=False):
            pairs_of[int(group_of[row.image_a])].append(
                {"image_a": row.image_a, "image_b": row.image_b,
                 "feature_distance": round(float(row.feature_distance), 6),
                 "copy_score": None if pd.isna(row.copy_score) else int(row.copy_score), "verdict": row.verdict,
                 "decision": row.decision})
        return [Group(number, members[number], pairs_of[number]) for number in sorted(members)]

    def intake(self) -> list[dict]:
        """The intake report's pairs (new photo, archived photo), each with its row and its decision."""
        report = self.source.report
        if report is None:
            return []
        decided = self.source.decisions.in_force() if self.source.decisions is not None else {}
        rows = []
        for number, row in enumerate(report.to_dict("records")):
            decision = decided.get(pair_key(row["image_a"], row["image_b"]), "")
            rows.append({"row": number, **{key: _plain(value) for key, value in row.items()}, "decision": decision})
        return rows


def waiting(items: list, is_waiting) -> list:
    """The items still waiting for a decision, in order."""
    return [item for item in items if is_waiting(item)]


def decisions_for_group(group: Group, decision: str) -> list[tuple[str, str]]:
    """The undecided pairs of ``group`` that a group-wide ``decision`` (same / not the same) settles."""
    if decision not in (SAME, NOT_SAME):
        raise ValueError(f"decision must be {SAME!r} or {NOT_SAME!r}, got {decision!r}")
    return [(pair["image_a"], pair["image_b"]) for pair in group.pairs if not pair["decision"]]


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
