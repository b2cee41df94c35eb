"""Reviewers' decisions: kept whole through kills, the latest in force, applied to reported pairs."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing

import pandas as pd
import pytest
from _launcher import start_python, wait_until

from skimgfeat.storage.decisions import NOT_SAME, SAME, DecisionStore, decisions_file_of, honour_decisions


def test_the_latest_decision_about_a_pair_is_in_force_whatever_its_order(tmp_path):
    store = DecisionStore.of(tmp_path)
    assert store.path == tmp_path / "decisions.sqlite" and not store.path.exists()  # reading makes nothing
    assert store.decision("a.jpg", "b.jpg") is None and store.latest().empty
    store.record("b.jpg", "a.jpg", NOT_SAME, source="duplicates")
    store.record("a.jpg", "c.jpg", SAME)
    store.record("a.jpg", "b.jpg", SAME, source="intake")
    assert store.decision("b.jpg", "a.jpg") == SAME
    latest = store.latest()
    assert latest[["image_a", "image_b", "decision"]].values.tolist() == [["a.jpg", "b.jpg", SAME],
                                                                           ["a.jpg", "c.jpg", SAME]]
    assert store.history()["decision"].tolist() == [NOT_SAME, SAME, SAME]
    assert latest["decided_at"].str.endswith("+00:00").all()


def test_a_decision_must_be_same_or_not_same_about_two_photos(tmp_path):
    store = DecisionStore(tmp_path / "decisions.sqlite")
    with pytest.raises(ValueError, match="decision must be one of"):
        store.record("a.jpg", "b.jpg", "maybe")
    with pytest.raises(ValueError, match="two photos"):
        store.record("a.jpg", "a.jpg", SAME)


def test_a_file_that_is_not_a_decisions_database_is_refused_naming_it(tmp_path):
    (tmp_path / "decisions.sqlite").write_text("not a database, " * 100)
    with pytest.raises(ValueError, match="decisions.sqlite"):
        DecisionStore.of(tmp_path).latest()


def test_the_store_lives_inside_a_folder_and_beside_a_table(tmp_path):
    table = tmp_path / "image_features_raw.parquet"
    table.touch()
    assert decisions_file_of(table) == decisions_file_of(tmp_path) == tmp_path / "decisions.sqlite"


def test_not_the_same_pairs_are_dropped_and_same_ones_reported_with_their_decision(tmp_path):
    store = DecisionStore.of(tmp_path)
    pairs = pd.DataFrame({"image_a": ["a", "a", "b"], "image_b": ["b", "c", "c"],
                          "verdict": ["copy", "different", "copy"]})
    assert honour_decisions(pairs, store) is pairs  # no decision yet: unchanged, no new column
    store.record("b", "a", NOT_SAME)
    store.record("c", "a", SAME)
    honoured = honour_decisions(pairs, store, same_verdict="copy", found="copy")
    assert honoured.values.tolist() == [["a", "c", "copy", SAME], ["b", "c", "copy", ""]]


def test_a_writer_killed_mid_stream_loses_no_committed_decision(tmp_path):
    """SIGKILL while another process records decisions as fast as it can: every committed one is read back."""
    path = tmp_path / "decisions.sqlite"
    writer = start_python(
        "import sys\n"
        "from skimgfeat.storage.decisions import DecisionStore\n"
        "store = DecisionStore(sys.argv[1])\n"
        "for i in range(100000):\n"
        "    store.record(f'photo_{i:06d}.jpg', f'photo_{i + 1:06d}.jpg', 'same' if i % 2 else 'not_same')\n",
        str(path),
    )
    wait_until(lambda: path.is_file() and _rows(path) >= 40, writer, timeout=120)
    writer.send_signal(signal.SIGKILL)
    writer.wait(30)
    history = DecisionStore(path).history()
    assert len(history) >= 40
    numbers = history["image_a"].str.extract(r"photo_(\d+)")[0].astype(int).tolist()
    assert numbers == list(range(len(history)))  # none lost, none doubled, in order
    assert DecisionStore(path).record("x.jpg", "y.jpg", SAME)  # and the next writer goes on


def _rows(path) -> int:
    try:
        with closing(sqlite3.connect(path)) as connection:
            return connection.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    except sqlite3.Error:  # the writer has not made the table yet
        return 0
