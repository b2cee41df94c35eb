"""Reviewers' decisions about pairs of photos: "the same" or "not the same", remembered by the archive.

A person reviewing the copies and re-listings that ``skimgfeat duplicates``,
``skimgfeat match`` or ``skimgfeat serve`` report decides, pair by pair, whether the two
photos really are the same (photo or object). A :class:`DecisionStore` keeps those
decisions in a small SQLite database beside the archive (:data:`DECISIONS_FILE`), in
WAL mode, each decision one committed transaction: a crash or a kill loses at most the
decision being written, never an earlier one, and a reader never sees half of one.
Every decision is kept with its time; the latest one about a pair is the one in force.

:func:`honour_decisions` applies them to a table of pairs: a pair decided
:data:`NOT_SAME` is no longer reported, a pair decided :data:`SAME` is, with its
decision in a ``decision`` column.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

DECISIONS_FILE = "decisions.sqlite"
SAME = "same"
NOT_SAME = "not_same"
DECISIONS = (SAME, NOT_SAME)
DECISION_COLUMNS = ("image_a", "image_b", "decision", "decided_at", "source")
# How long a writer waits for another one's transaction (they take milliseconds).
_BUSY_SECONDS = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_a TEXT NOT NULL,
    image_b TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('same', 'not_same')),
    decided_at TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS decisions_by_pair ON decisions (image_a, image_b, id);
"""


def decisions_file_of(archive: str | os.PathLike) -> Path:
    """Where the decisions about ``archive``'s photos live: inside a folder, beside a table file."""
    archive = Path(archive)
    return (archive if archive.is_dir() else archive.parent) / DECISIONS_FILE


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The two names of a pair in a fixed order: a decision about (a, b) is one about (b, a)."""
    a, b = str(a), str(b)
    return (a, b) if a <= b else (b, a)


class DecisionStore:
    """The decisions about pairs of photos of one archive, in one SQLite file.

    Parameters
    ----------
    path : str or os.PathLike
        The database file (see :func:`decisions_file_of`); made on the first
        :meth:`record`, never by reading.

    Examples
    --------
    >>> import tempfile
    >>> store = DecisionStore(Path(tempfile.mkdtemp()) / DECISIONS_FILE)
    >>> store.record("b.jpg", "a.jpg", NOT_SAME)["image_a"]
    'a.jpg'
    >>> store.decision("a.jpg", "b.jpg")
    'not_same'
    >>> store.record("a.jpg", "b.jpg", SAME)["decision"]
    'same'
    >>> len(store.latest()), len(store.history())
    (1, 2)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one writer per process; SQLite serialises processes

    @classmethod
    def of(cls, archive: str | os.PathLike) -> DecisionStore:
        """The store of an archive folder, index folder or feature table (see :func:`decisions_file_of`)."""
        return cls(decisions_file_of(archive))

    def __repr__(self) -> str:
        return f"DecisionStore({os.fspath(self.path)!r})"

    # -- writing ------------------------------------------------------------------------

    def record(self, image_a: str, image_b: str, decision: str, *, source: str = "") -> dict:
        """Write one decision about the pair (``image_a``, ``image_b``), durably; return it as a dict.

        ``decision`` is :data:`SAME` or :data:`NOT_SAME`; ``source`` says what was
        reviewed (e.g. ``"duplicates"``, ``"intake"``, ``"search"``). ValueError for
        anything else or for a pair of one photo.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        a, b = pair_key(image_a, image_b)
        if a == b:
            raise ValueError(f"a pair needs two photos, got {a!r} twice")
        row = {"image_a": a, "image_b": b, "decision": decision,
               "decided_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "source": str(source)}
        with self._lock, self._connection(create=True) as connection:
            with connection:  # one transaction: committed whole, or not at all
                connection.execute(
                    "INSERT INTO decisions (image_a, image_b, decision, decided_at, source) VALUES (?, ?, ?, ?, ?)",
                    tuple(row.values()))
        return row

    # -- reading ------------------------------------------------------------------------

    def history(self) -> pd.DataFrame:
        """Every decision ever written, oldest first: :data:`DECISION_COLUMNS`."""
        return self._query("SELECT image_a, image_b, decision, decided_at, source FROM decisions ORDER BY id")

    def latest(self) -> pd.DataFrame:
        """The decision in force for each decided pair (its latest), newest first."""
        return self._query(
            "SELECT image_a, image_b, decision, decided_at, source FROM decisions WHERE id IN "
            "(SELECT MAX(id) FROM decisions GROUP BY image_a, image_b) ORDER BY id DESC")

    def decision(self, image_a: str, image_b: str) -> str | None:
        """The decision in force about a pair, None when it has none."""
        a, b = pair_key(image_a, image_b)
        if not self.path.is_file():
            return None
        with self._connection() as connection:
            found = connection.execute("SELECT decision FROM decisions WHERE image_a = ? AND image_b = ? "
                                       "ORDER BY id DESC LIMIT 1", (a, b)).fetchone()
        return found[0] if found else None

    def in_force(self) -> dict[tuple[str, str], str]:
        """``{pair_key: decision}`` of every decided pair."""
        latest = self.latest()
        return dict(zip(zip(latest["image_a"], latest["image_b"]), latest["decision"]))

    def __len__(self) -> int:
        return len(self.latest())

    # -- internals ----------------------------------------------------------------------

    def _query(self, sql: str) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame({column: pd.Series(dtype=object) for column in DECISION_COLUMNS})
        with self._connection() as connection:
            rows = connection.execute(sql).fetchall()
        return pd.DataFrame(rows, columns=list(DECISION_COLUMNS), dtype=object)

    @contextmanager
    def _connection(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise FileNotFoundError(f"decisions file {os.fspath(self.path)!r} does not exist")
        try:
            if create or os.access(self.path.parent, os.W_OK):
                connection = sqlite3.connect(self.path, timeout=_BUSY_SECONDS)
            else:  # a read-only archive: no -wal/-shm files can be made beside it, and no writer is there
                connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        except sqlite3.Error as error:
            raise ValueError(f"{os.fspath(self.path)!r} cannot be opened as a decisions file: {error}") from error
        with closing(connection):
            try:
                if create:
                    # WAL (kept by the file): a commit appends to the log and is durable once synced
                    # (synchronous=FULL); a crash mid-write leaves the earlier commits whole.
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=FULL")
                    connection.executescript(_SCHEMA)
                yield connection
            except sqlite3.DatabaseError as error:
                raise ValueError(f"{os.fspath(self.path)!r} is not a skimgfeat decisions file: {error}") from error


def honour_decisions(
    pairs: pd.DataFrame,
    store: DecisionStore | None,
    *,
    columns: tuple[str, str] = ("image_a", "image_b"),
    same_verdict: str | None = None,
    found: str | None = None,
) -> pd.DataFrame:
    """Apply the reviewers' decisions to a table of reported pairs.

    Parameters
    ----------
    pairs : DataFrame
        One row per pair, the two photos named in ``columns``.
    store : DecisionStore or None
        None, or a store without decisions: ``pairs`` unchanged.
    columns : (str, str), default=("image_a", "image_b")
    same_verdict : str or None
        When given, a pair decided :data:`SAME` whose ``verdict`` is not ``found``
        gets this verdict (a person said it is what the tool looks for).
    found : str or None
        The verdict of a reported pair (e.g. ``"copy"``); with ``same_verdict``.

    Returns
    -------
    DataFrame
        ``pairs`` without the pairs decided :data:`NOT_SAME`, with a ``decision``
        column (``same`` or empty) when any decision is in force; the index is reset.

    Examples
    --------
    >>> import tempfile
    >>> store = DecisionStore(Path(tempfile.mkdtemp()) / DECISIONS_FILE)
    >>> _ = store.record("a.jpg", "b.jpg", NOT_SAME)
    >>> _ = store.record("c.jpg", "a.jpg", SAME)
    >>> pairs = pd.DataFrame({"image_a": ["a.jpg", "a.jpg", "b.jpg"], "image_b": ["b.jpg", "c.jpg", "c.jpg"]})
    >>> honour_decisions(pairs, store).values.tolist()
    [['a.jpg', 'c.jpg', 'same'], ['b.jpg', 'c.jpg', '']]
    """
    decided = store.in_force() if store is not None else {}
    if not decided:
        return pairs
    first, second = columns
    said = np.asarray([decided.get(pair_key(a, b), "") for a, b in zip(pairs[first], pairs[second])], dtype=object)
    kept = pairs.assign(decision=said)[said != NOT_SAME].reset_index(drop=True)
    if same_verdict is not None and "verdict" in kept.columns:
        promote = (kept["decision"] == SAME) & (kept["verdict"] != found)
        kept.loc[promote, "verdict"] = same_verdict
    return kept
