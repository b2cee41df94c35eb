"""``skimgfeat duplicates``: copies among the photos of a feature table, or of new photos in an archive."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import (
    EXIT_OK,
    UsageError,
    add_command,
    add_table_photo_options,
    usage_errors,
    weights_from_env,
)

TABLE_SUFFIXES = (".parquet", ".csv")


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add ``duplicates``."""
    from ..matching.copy_check import COPY_THRESHOLD, HASHES_FILE
    from ..matching.duplicates import DEFAULT_CANDIDATE_DISTANCE, DEFAULT_DUPLICATE_THRESHOLD

    duplicates = add_command(
        commands, common, "duplicates", "list copies of photos: groups in a feature table, or new photos in an archive",
        "Two stages: photos closer than --threshold in cosine distance are candidate pairs, then the copy "
        "check compares their perceptual hashes, which a resized, recompressed, cropped, mirrored, matted or "
        "re-exposed copy keeps and a re-shoot of the same object does not; with the photos' local features "
        "(`extract --local-features`) a hash match must also agree in content, else a stricter hash rule "
        "decides. With --features (or --index), print as CSV on "
        "stdout "
        "(group,image_path,chained) every photo of the table that has a copy: groups are the connected "
        "copy pairs, numbered from 0 in table order; chained marks a group in which some two photos are not "
        "themselves copies. With NEW... --against ARCHIVE, print (image_path,duplicate_of,feature_distance,"
        f"copy_score) each new photo that already exists in the archive, which is not regrouped. Hashes come "
        f"from {HASHES_FILE} beside a table or in an index directory (`skimgfeat extract --hashes` writes it); "
        "photos without them are hashed now.",
    )
    duplicates.add_argument("new", nargs="*", metavar="NEW",
                            help="with --against: new image files or feature tables (.parquet, .csv)")
    source = duplicates.add_mutually_exclusive_group()
    source.add_argument("--features", type=Path, default=None, metavar="FEATURES",
                        help="a per-image table written by `skimgfeat extract` (.parquet, .csv): group its copies")
    source.add_argument("--index", type=Path, default=None, metavar="INDEX_DIR",
                        help="an index directory written by `skimgfeat index build`: group its copies")
    source.add_argument("--against", type=Path, default=None, metavar="ARCHIVE",
                        help="the archive's feature table or index directory: which NEW photos are copies of its "
                             "photos")
    duplicates.add_argument("--threshold", type=float, default=None, metavar="T",
                            help=f"cosine distance of the candidate pairs (default: {DEFAULT_CANDIDATE_DISTANCE}; "
                                 f"{DEFAULT_DUPLICATE_THRESHOLD} with --no-copy-check, where it alone decides)")
    duplicates.add_argument("--copy-threshold", type=_bits, default=COPY_THRESHOLD, metavar="BITS",
                            help="largest copy distance, in bits of the perceptual hashes, of a copy "
                                 "(default: %(default)s)")
    duplicates.add_argument("--no-copy-check", action="store_true",
                            help="features alone decide: every candidate pair is a copy (no photo is read)")
    duplicates.add_argument("--hashes", type=Path, default=None, metavar="FILE",
                            help=f"the archive's hashes (default: {HASHES_FILE} beside the table or inside the index "
                                 "directory, when there)")
    duplicates.add_argument("--pairs", type=Path, default=None, metavar="PAIRS.csv",
                            help="also write every candidate pair: image_a,image_b,feature_distance,copy_score,"
                                 "verdict (copy, different, unreadable; same_object with local features),reason")
    duplicates.add_argument("--local-features", type=Path, default=None, metavar="DIR",
                            help="the photos' local features (`skimgfeat extract --local-features`; default: "
                                 "local_features beside the table, when there): candidate pairs that are not copies "
                                 "are verified as same_object or different, with their inliers")
    duplicates.add_argument("--sheet", type=Path, default=None, metavar="SHEET.png",
                            help="also draw each group (each new photo and its copies) as a row of a contact sheet")
    add_table_photo_options(duplicates, embedded="NEW image files")
    duplicates.set_defaults(handler=run_duplicates)


def _bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 0 to 64, got {text!r}") from None
    if not 0 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected a number of bits from 0 to 64, got {text!r}")
    return value


def run_duplicates(args: argparse.Namespace) -> int:
    """Group the copies of a table, or find the new photos' copies in an archive."""
    archive = args.features or args.index
    if archive is None and args.against is None:
        raise UsageError("give either --features TABLE or --index INDEX_DIR (group its copies), "
                         "or NEW... --against ARCHIVE")
    if archive is not None and args.new:
        raise UsageError(f"NEW photos or tables ({args.new[0]!r}) go with --against, not --features or --index")
    if args.against is not None and not args.new:
        raise UsageError("--against needs NEW image files or feature tables to look for")
    if archive is not None:
        return _group_table(args, archive)
    return _against_archive(args)


def _group_table(args: argparse.Namespace, archive: Path) -> int:
    from ..matching.duplicates import duplicate_groups, iter_duplicate_pairs
    from ..storage.io import write_table_chunks

    with usage_errors():  # a missing or foreign table or index, a threshold out of range, a foreign hashes file
        index = _read_index(archive, args.image_dir)
        copy_check = _copy_check(args, index, archive, args.hashes)
        local_features = _local_features(args, archive, copy_check)
        blocks = iter_duplicate_pairs(index, max_distance=args.threshold, copy_check=copy_check,
                                      copy_threshold=args.copy_threshold, local_features=local_features,
                                      same_object=local_features is not None)
        # Each block of judged pairs is counted, written to --pairs and dropped: only the copies are kept.
        tally = _Tally()
        decisions = _decisions(archive)
        blocks = map(tally.add, map(decisions, blocks))
        if args.pairs is not None:
            write_table_chunks(blocks, args.pairs)
        else:
            for _ in blocks:
                pass
    copies = tally.copies()
    groups = duplicate_groups(copies, key=index.key, order=index.names)
    groups.to_csv(sys.stdout, index=False)
    tally.report(args)
    if args.sheet is not None:
        _draw(args.sheet, _group_sheet_rows(groups, copies, index.key), index)
    return EXIT_OK


class _Tally:
    """Counts the verdicts of blocks of pairs and keeps the copy pairs (and the unreadable ones' reasons)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.kept = []
        self.unreadable: dict[str, None] = {}
        self.hash_only = 0

    def add(self, block):
        from ..matching.copy_check import COPY, UNREADABLE
        from ..matching.duplicates import WITHOUT_CONTENT_CHECK

        for verdict, count in block["verdict"].value_counts().items():
            self.counts[verdict] = self.counts.get(verdict, 0) + int(count)
        self.unreadable.update(dict.fromkeys(block.loc[block["verdict"] == UNREADABLE, "reason"]))
        self.hash_only += int(block["reason"].str.endswith(WITHOUT_CONTENT_CHECK).sum())
        self.kept.append(block[block["verdict"] == COPY][["image_a", "image_b", "feature_distance", "verdict"]])
        return block

    def copies(self):
        import pandas as pd

        return pd.concat(self.kept, ignore_index=True)

    def report(self, args: argparse.Namespace) -> None:
        _warn_and_count(args, self.counts, self.unreadable, self.hash_only)


def _against_archive(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from ..matching.copy_check import COPY, UNREADABLE
    from ..matching.duplicates import find_copies_against
    from ..schema import IMAGE_PATH

    with usage_errors():
        index = _read_index(args.against, args.image_dir)
        archive_hashes = _copy_check(args, index, args.against, args.hashes)
        local_features = _local_features(args, args.against, archive_hashes)
        names, vectors, photos, new_hashes, failed = _new_photos(args, index)
        pairs = find_copies_against(index, names, vectors, photos=photos, max_distance=args.threshold,
                                    copy_check=new_hashes, archive_hashes=archive_hashes,
                                    copy_threshold=args.copy_threshold, local_features=local_features)
    if failed:  # new photos that could not be embedded: reported, never silently dropped
        pairs = pd.concat([pairs, pd.DataFrame({"image_a": list(failed), "image_b": "", "feature_distance": np.nan,
                                                "copy_score": np.nan, "verdict": UNREADABLE,
                                                "reason": list(failed.values())})], ignore_index=True)
    pairs = _honour_decisions(pairs, args.against)
    found = pairs[pairs["verdict"] == COPY]
    found = found.rename(columns={"image_a": IMAGE_PATH, "image_b": "duplicate_of"})
    decided = ["decision"] if "decision" in found.columns else []  # the reviewers' "same", when any is in force
    found[[IMAGE_PATH, "duplicate_of", "feature_distance", "copy_score", *decided]].to_csv(
        sys.stdout, index=False, float_format="%.6f")
    _report(args, pairs)
    if args.sheet is not None:
        photo_of = dict(zip(names, (os.fspath(photo) if photo is not None else name
                                    for name, photo in zip(names, photos))))
        sheet_rows = found.assign(query=found[IMAGE_PATH].map(photo_of), distance=found["feature_distance"])
        sheet_rows["rank"] = sheet_rows.groupby("query").cumcount() + 1
        # The archive's photo under the key column (the new photo's image_path is the query): one column of
        # that name, or the sheet labels every tile with the column's name and finds no photo.
        _draw(args.sheet, sheet_rows.drop(columns=IMAGE_PATH).rename(columns={"duplicate_of": index.key}), index)
    return EXIT_OK


# -- inputs -------------------------------------------------------------------------------


def _read_index(path: Path, image_dir: Path | None):
    """A feature table's exact index, or an index directory (its photos under ``image_dir`` when given)."""
    from ..search.similarity import SimilarityIndex

    if not path.is_dir():
        return SimilarityIndex.read(path, image_dir=image_dir)
    index = SimilarityIndex.load(path)
    if image_dir is not None:
        index.image_dir = image_dir
    return index


def _local_features(args: argparse.Namespace, archive: Path, copy_check):
    """The archive's local features (--local-features, else local_features beside it), or None with a note.

    With them a hash match is a copy only when the content agrees, and the other pairs
    are verified as ``same_object`` or ``different``; without them the hashes alone decide,
    by a stricter rule.
    """
    from ..matching.local_features import LOCAL_FEATURES_DIR, LocalFeatureStore

    if copy_check is False:
        return None
    folder = args.local_features
    if folder is None:
        beside = (archive if archive.is_dir() else archive.parent) / LOCAL_FEATURES_DIR
        folder = beside if beside.is_dir() else None
    if folder is None:
        _note(args, f"no {LOCAL_FEATURES_DIR} beside {os.fspath(archive)}: the hashes alone decide, by a stricter "
                    "rule that cannot tell framed works or objects on one backdrop apart (`skimgfeat extract "
                    "--local-features` stores what confirms a copy by its content)")
        return None
    return LocalFeatureStore(folder)


def _decisions(archive: Path):
    """The reviewers' decisions as a function of a block of pairs (see :func:`_honour_decisions`)."""
    from ..matching.copy_check import COPY
    from ..storage.decisions import DecisionStore, honour_decisions

    store = DecisionStore.of(archive)
    return lambda pairs: honour_decisions(pairs, store, same_verdict=COPY, found=COPY)


def _honour_decisions(pairs, archive: Path):
    """The reviewers' decisions (``skimgfeat serve``): pairs judged not the same dropped, the same ones kept."""
    from ..matching.copy_check import COPY
    from ..storage.decisions import DecisionStore, honour_decisions

    return honour_decisions(pairs, DecisionStore.of(archive), same_verdict=COPY, found=COPY)


def _hashes_beside(archive: Path) -> Path:
    from ..matching.copy_check import HASHES_FILE

    return (archive if archive.is_dir() else archive.parent) / HASHES_FILE


def _copy_check(args: argparse.Namespace, index, table: Path, hashes_file: Path | None):
    """False, or the hashes of ``table`` or index directory (True when there are none: photos hashed now)."""
    from ..matching.copy_check import HASHES_FILE, OutdatedHashesError, PhotoHashes
    from ..schema import IMAGE_PATH

    if args.no_copy_check:
        return False
    if index.key != IMAGE_PATH:
        _note(args, f"{os.fspath(table)} has one row per item: features alone decide (no copy check)")
        return False
    hashes_file = hashes_file or _hashes_beside(table)
    if hashes_file.is_file():
        try:
            return PhotoHashes.read(hashes_file)
        except OutdatedHashesError as error:
            _note(args, f"{error}; until then the photos of candidate pairs are hashed now")
            return True
    if args.hashes is not None:
        raise FileNotFoundError(f"hashes file {os.fspath(hashes_file)!r} does not exist")
    where = "in" if table.is_dir() else "beside"
    _note(args, f"no {HASHES_FILE} {where} {os.fspath(table)}: the photos of candidate pairs are hashed now "
                "(`skimgfeat extract --hashes` writes it once)")
    return True


def _new_photos(args: argparse.Namespace, index):
    """(names, vectors, photo paths, hashes or True/False, {name: reason} of failed photos) of NEW."""
    import numpy as np

    from .. import embedder_from_model_info
    from ..matching.copy_check import OutdatedHashesError, PhotoHashes

    names, vectors, photos, hashes, failed = [], [], [], None, {}
    for item in args.new:  # a folder is neither a photo nor a table: say what to pass (it used to exit 0)
        if Path(item).is_dir():
            raise UsageError(f"NEW {item!r} is a folder: pass its photos ({os.path.join(item, '*.jpg')}) or "
                             "the feature table extract wrote for them (OUT/image_features_raw.parquet)")
    files = [item for item in args.new if Path(item).suffix.lower() not in TABLE_SUFFIXES]
    for table in (Path(item) for item in args.new if Path(item).suffix.lower() in TABLE_SUFFIXES):
        new = _read_index(table, None)
        index.check_model(new.model_info, what=os.fspath(table))
        names += list(new.names)
        vectors.append(new.vectors)
        table_photos = [new.photo_path(name) or Path(table.parent, name) for name in new.names]
        photos += table_photos
        beside = _hashes_beside(table)
        if beside.is_file() and not args.no_copy_check:
            try:
                read = PhotoHashes.read(beside)
            except OutdatedHashesError as error:
                _note(args, f"{error}; until then its photos are hashed now")
                continue
            # Keyed by the photo's file, not its name: two tables may both hold a `0001.jpg`.
            where = dict(zip(new.names, map(os.fspath, table_photos)))
            known = read.contains(new.names)
            read = PhotoHashes([where[name] for name in new.names[known]], *read.lookup(new.names[known]))
            hashes = read if hashes is None else hashes.merged(read)
    if files:
        embedder = embedder_from_model_info(index.model_info or {}, weights_from_env(args.weights),
                                            on_error="nan").fit()
        embedded = np.asarray(embedder.transform(files), dtype=np.float32)
        for error in embedder.errors_:
            failed[error.path] = f"{error.path}: {_reason(error)}"
        names += files
        vectors.append(embedded)
        photos += files
    copy_check = False if args.no_copy_check else (hashes if hashes is not None else True)
    return _unique_names(names, photos), np.concatenate(vectors), photos, copy_check, failed


def _unique_names(names: list[str], photos: list) -> list[str]:
    """The new photos' names, a name that two inputs share replaced by each photo's path (so both are told apart)."""
    from collections import Counter

    counts = Counter(names)
    return [os.fspath(photo) if counts[name] > 1 and photo is not None else name
            for name, photo in zip(names, photos)]


def _reason(error) -> str:
    reason, detail = getattr(error, "reason", str(error)), getattr(error, "detail", "")
    return f"{reason} ({detail})" if detail else reason


# -- outputs ------------------------------------------------------------------------------


def _report(args: argparse.Namespace, pairs) -> None:
    from ..matching.copy_check import UNREADABLE
    from ..matching.duplicates import WITHOUT_CONTENT_CHECK
    from ..storage.io import write_table

    if args.pairs is not None:
        write_table(pairs, args.pairs)
    counts = {verdict: int(count) for verdict, count in pairs["verdict"].value_counts().items()}
    unreadable = dict.fromkeys(pairs.loc[pairs["verdict"] == UNREADABLE, "reason"])
    _warn_and_count(args, counts, unreadable, int(pairs["reason"].str.endswith(WITHOUT_CONTENT_CHECK).sum()))


def _warn_and_count(args: argparse.Namespace, counts: dict, unreadable, hash_only: int) -> None:
    from ..matching.copy_check import COPY, DIFFERENT, SAME_OBJECT, UNREADABLE

    for reason in unreadable:
        print(f"skimgfeat: warning: cannot read {reason}", file=sys.stderr)
    shown = (COPY, *((SAME_OBJECT,) if counts.get(SAME_OBJECT) else ()), DIFFERENT, UNREADABLE)
    _note(args, f"{sum(counts.values())} candidate pairs: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in shown))
    if hash_only:
        _note(args, f"{hash_only} pairs without stored local features: their hashes decided them, with their pixels "
                    "where the photos were at hand (see --pairs)")


def _note(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"skimgfeat: {message}", file=sys.stderr)


def _group_sheet_rows(groups, pairs, key: str):
    """Each group as one row of the sheet: its first member, then the others with their distance to it."""
    import pandas as pd

    distance = {(a, b): d for a, b, d in zip(pairs["image_a"], pairs["image_b"], pairs["feature_distance"])}
    rows = []
    for _, members in groups.groupby("group", sort=True)[key]:
        first, *others = members.tolist()
        for rank, other in enumerate(others, start=1):
            rows.append((first, rank, other, distance.get((first, other), distance.get((other, first), float("nan")))))
    return pd.DataFrame(rows, columns=["query", "rank", key, "distance"])


def _draw(path: Path, rows, index) -> None:
    from ..plotting.contact_sheet import contact_sheet
    from ..storage.io import atomic_path

    with atomic_path(path) as temporary:
        contact_sheet(rows, index).save(temporary, format="PNG")
