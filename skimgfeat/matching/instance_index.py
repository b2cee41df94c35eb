"""The instance-level shortlist: an inverted file over the photos' stored AKAZE descriptors.

Global CNN features rank photos of the same *kind* of object together; a phone photo of
a DVD case lies closer to phone photos of other cases than to its own clean catalogue
photo. What does find the catalogue photo is its local patches: ranking every photo by
its count of AKAZE matches puts it in the top 100 for 97% of phone photos. Matching a
query against every photo of an archive is too slow, so this module approximates that
ranking with a *visual vocabulary* and an *inverted file* (Nistér and Stewénius,
"Scalable recognition with a vocabulary tree", CVPR 2006) whose entries carry a short
binary signature of their descriptor (*Hamming embedding*, Jégou, Douze and Schmid,
ECCV 2008):

* the vocabulary is a two-level tree of binary centres (k-majority: each centre is the
  per-bit majority of the descriptors nearest to it, the binary counterpart of
  k-means), trained on a sample of the archive's own descriptors; a descriptor's *word*
  is its nearest top centre, then the nearest of that centre's children;
* the inverted file lists, for each word, the descriptors of the photos holding it: the
  photo's number and 64 of the descriptor's 486 bits (those most evenly split in the
  training sample). Two descriptors of one word *match* when those bits differ in at most
  ``max_hamming`` places: within a word the signature tells a true match from a patch
  that only looks alike at the vocabulary's coarse resolution;
* a query's descriptors vote for the photos their matches belong to, each vote weighted
  by the word's idf squared and by how close the signatures are; a photo's score is its
  votes divided by the norms of both photos' idf vectors. A search touches only the
  lists of the query's own words.

A photo enters the inverted file with at most ``max_words`` of its descriptors, the
strongest (the store keeps them strongest first): 12 bytes each (a 4-byte photo number
and an 8-byte signature), about 3.6 GB for a million photos at 300 each, memory-mapped
when loaded (a search reads the lists it needs). The descriptors themselves stay in the
local-features store, where verification reads them.

:class:`InstanceIndex` is fitted, added to, searched and saved like an estimator's
fitted state; :func:`instance_index_for` builds one from a local-features folder and
keeps it up to date next to it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..storage.file_lock import holding
from ..storage.generation_lock import release
from ..storage.vector_index import open_named_generation, read_generation, write_generation
from .local_features import DESCRIPTOR_BYTES, LocalFeatures, LocalFeatureStore, import_cv2

INSTANCE_INDEX_DIR = "instance_index"
FORMAT_VERSION = 1
DEFAULT_BRANCHING = 256
DEFAULT_MAX_WORDS = 1000
DEFAULT_QUERY_WORDS = 2
DEFAULT_TRAINING_DESCRIPTORS = 200_000
DEFAULT_ITERATIONS = 5
DEFAULT_MAX_HAMMING = 16  # of the 64 signature bits
SIGNATURE_BITS = 64
AKAZE_BITS = 486  # the descriptor's bits before the padding
# A word needs at least this many training descriptors per child centre: fewer and the centres only memorise them.
MIN_DESCRIPTORS_PER_CENTRE = 8
TOP_DESCRIPTORS_PER_CENTRE = 2000
# Parameters that change a search only, not what the index holds.
SEARCH_PARAMETERS = ("query_words", "max_hamming")
LOCK_SECONDS = 3600.0  # how long a second process waits for the first one making the index
_ARRAYS = ("top", "children", "child_start", "child_count", "signature_bits", "offsets", "postings_photo",
           "postings_signature", "removed", "idf", "norms")


class InstanceIndex:
    """An inverted file of visual words over photos' AKAZE descriptors: which photos show this object?

    Parameters
    ----------
    branching : int, default=256
        Centres per level of the vocabulary tree (at most ``branching ** 2`` words); a
        small training set gets fewer, so that each centre has at least 8 descriptors.
    max_words : int, default=1000
        Descriptors of a photo entered in the inverted file, the strongest; a query uses all of its own.
    query_words : int, default=2
        Words each query descriptor looks in: its nearest children of its top centre
        (a match that quantisation put in the neighbouring word is still found).
    max_hamming : int, default=16
        Two descriptors of one word match when their 64-bit signatures differ in at most this many bits.
    training_descriptors : int, default=200_000
        Descriptors drawn (evenly over the photos) to train the vocabulary.
    iterations : int, default=5
        k-majority rounds per level.
    random_state : int, default=0

    Attributes
    ----------
    names_ : list of str
        The photos added, in order (``removed_`` marks the ones taken out again).
    n_words_ : int
        Words of the vocabulary.
    source_ : dict
        The local-features part files it holds (name: size and time), as saved.
    generation_ : str or None
        The generation it was loaded from or saved as (``gen-000003``); None before a save.

    Examples
    --------
    >>> import numpy as np
    >>> from skimgfeat.matching.local_features import LocalFeatures
    >>> rng = np.random.default_rng(0)
    >>> photos = [LocalFeatures(np.zeros((200, 2), np.float32), rng.integers(0, 256, (200, 64), dtype=np.uint8),
    ...                         (64, 64)) for _ in range(10)]
    >>> index = InstanceIndex(branching=8).fit_vocabulary([p.descriptors for p in photos])
    >>> index = index.add([f"{i}.jpg" for i in range(10)], photos)
    >>> names, scores = index.search(photos[3], k=2)
    >>> names[0]
    '3.jpg'
    """

    def __init__(self, *, branching: int = DEFAULT_BRANCHING, max_words: int = DEFAULT_MAX_WORDS,
                 query_words: int = DEFAULT_QUERY_WORDS, max_hamming: int = DEFAULT_MAX_HAMMING,
                 training_descriptors: int = DEFAULT_TRAINING_DESCRIPTORS, iterations: int = DEFAULT_ITERATIONS,
                 random_state: int = 0) -> None:
        self.branching = branching
        self.max_words = max_words
        self.query_words = query_words
        self.max_hamming = max_hamming
        self.training_descriptors = training_descriptors
        self.iterations = iterations
        self.random_state = random_state

    # -- the vocabulary -----------------------------------------------------------------------------------------

    def fit_vocabulary(self, descriptors: np.ndarray | Iterable[np.ndarray]) -> InstanceIndex:
        """Train the vocabulary tree on descriptors (arrays of shape (n, 64), uint8); empties the inverted file.

        ``descriptors`` may be one array or one array per photo; at most ``training_descriptors``
        of them are used, drawn at random.
        """
        if isinstance(descriptors, np.ndarray):
            descriptors = [descriptors]
        pool = [np.asarray(block, dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES) for block in descriptors]
        sample = np.concatenate(pool) if pool else np.empty((0, DESCRIPTOR_BYTES), np.uint8)
        if len(sample) < 2 * MIN_DESCRIPTORS_PER_CENTRE:
            raise ValueError(f"a vocabulary needs at least {2 * MIN_DESCRIPTORS_PER_CENTRE} descriptors, "
                             f"got {len(sample)}: add photos with texture first")
        rng = np.random.default_rng(self.random_state)
        if len(sample) > self.training_descriptors:
            sample = sample[rng.choice(len(sample), self.training_descriptors, replace=False)]
        # Two levels of b centres each, b chosen so that a leaf word keeps MIN_DESCRIPTORS_PER_CENTRE of the sample.
        top_count = int(min(self.branching, max(2, np.sqrt(len(sample) / MIN_DESCRIPTORS_PER_CENTRE))))
        # The top centres need far fewer descriptors than the leaves: trained on a share of the sample (memory and
        # time stay those of the leaves' k-majority, cluster by cluster).
        top_sample = sample
        if len(sample) > TOP_DESCRIPTORS_PER_CENTRE * top_count:
            top_sample = sample[rng.choice(len(sample), TOP_DESCRIPTORS_PER_CENTRE * top_count, replace=False)]
        top = _k_majority(top_sample, top_count, self.iterations, rng)
        nearest = _nearest(sample, top)
        children, child_start, child_count = [], [], []
        start = 0
        for centre in range(len(top)):
            members = sample[nearest == centre]
            count = int(min(self.branching, max(1, len(members) // MIN_DESCRIPTORS_PER_CENTRE)))
            centres = _k_majority(members, count, self.iterations, rng) if len(members) else top[centre:centre + 1]
            children.append(centres)
            child_start.append(start)
            child_count.append(len(centres))
            start += len(centres)
        self.top_ = top
        self.children_ = np.concatenate(children)
        self.child_start_ = np.asarray(child_start, dtype=np.int64)
        self.child_count_ = np.asarray(child_count, dtype=np.int64)
        self.n_words_ = int(start)
        # The signature: the bits most evenly split over the sample (a bit almost always 0 tells nothing).
        ones = np.unpackbits(sample, axis=1)[:, :AKAZE_BITS].mean(axis=0)
        self.signature_bits_ = np.sort(np.argsort(np.abs(ones - 0.5), kind="stable")[:SIGNATURE_BITS]).astype(
            np.int16)
        self._clear()
        return self

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """The word of each descriptor (int32): its nearest top centre, then the nearest of its children."""
        words, _ = self._words(descriptors, 1)
        return words

    def _words(self, descriptors: np.ndarray, per_descriptor: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``per_descriptor`` nearest words of each descriptor (children of its nearest top centre), and
        the descriptor each word is of."""
        self._check_fitted()
        descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES)
        if not len(descriptors):
            return np.empty(0, np.int32), np.empty(0, np.int64)
        top = _nearest(descriptors, self.top_)
        order = np.argsort(top, kind="stable")
        bounds = np.flatnonzero(np.diff(top[order])) + 1
        words, owners = [], []
        for rows in np.split(order, bounds):
            centre = top[rows[0]]
            start, count = self.child_start_[centre], self.child_count_[centre]
            nearest, owner = _nearest_k(descriptors[rows], self.children_[start:start + count], per_descriptor)
            words.append(start + nearest)
            owners.append(rows[owner])
        words, owners = np.concatenate(words).astype(np.int32), np.concatenate(owners)
        if per_descriptor == 1:  # back in the descriptors' order
            placed = np.empty_like(words)
            placed[owners] = words
            return placed, np.arange(len(descriptors))
        return words, owners

    def signatures(self, descriptors: np.ndarray) -> np.ndarray:
        """The 64-bit signature (uint64) of each descriptor: its bits at ``signature_bits_``."""
        self._check_fitted()
        descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES)
        bits = np.unpackbits(descriptors, axis=1)[:, self.signature_bits_]
        return np.ascontiguousarray(np.packbits(bits, axis=1)).view(np.uint64).ravel()

    # -- the inverted file --------------------------------------------------------------------------------------

    def add(self, names: Sequence[str], local_features: Iterable[LocalFeatures]) -> InstanceIndex:
        """Enter photos (their strongest ``max_words`` descriptors); a name already there is replaced."""
        self._check_fitted()
        names = [str(name) for name in names]
        features = list(local_features)
        if len(names) != len(features):
            raise ValueError(f"{len(names)} names for {len(features)} local features")
        self.remove([name for name in names if name in self._row_of])
        first = len(self.names_)
        for row, name in enumerate(names, start=first):
            self.names_.append(name)
            self._row_of[name] = row
        self.removed_ = np.concatenate([self.removed_, np.zeros(len(names), bool)])
        kept = [np.asarray(entry.descriptors[:self.max_words], dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES)
                for entry in features]
        if names:  # the batch quantised at once: one matcher call per top centre, not per photo
            descriptors = np.concatenate(kept)
            photos = np.repeat(np.arange(first, first + len(names)), [len(block) for block in kept])
            self._merge(self.words(descriptors), photos.astype(np.int32), self.signatures(descriptors))
        return self

    def remove(self, names: Iterable[str]) -> InstanceIndex:
        """Take photos out (names not in the index are ignored); their entries are dropped at the next save."""
        rows = [self._row_of.pop(str(name)) for name in names if str(name) in self._row_of]
        if rows:
            self.removed_ = self.removed_.copy()
            self.removed_[rows] = True
            self._norms = None
        return self

    def __len__(self) -> int:
        return len(self._row_of)

    def __contains__(self, name) -> bool:
        return str(name) in self._row_of

    def names(self) -> list[str]:
        """The photos in the index."""
        return list(self._row_of)

    def search(self, query: LocalFeatures | np.ndarray, k: int = 100) -> tuple[list[str], np.ndarray]:
        """The ``k`` photos whose descriptors agree best with the query's: names and scores, best first.

        ``query`` is a photo's :class:`~skimgfeat.matching.local_features.LocalFeatures` (all its
        descriptors are used) or its descriptors. Photos without a matching descriptor are not returned.
        """
        self._check_fitted()
        descriptors = query.descriptors if isinstance(query, LocalFeatures) else query
        descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8).reshape(-1, DESCRIPTOR_BYTES)
        if not len(descriptors) or not len(self):
            return [], np.empty(0, np.float32)
        idf, norms = self._idf_and_norms()
        words, owners = self._words(descriptors, max(1, self.query_words))
        signatures = self.signatures(descriptors)[owners]
        photos, weights = self._votes(words, signatures, idf)
        if not len(photos):
            return [], np.empty(0, np.float32)
        candidates, inverse = np.unique(photos, return_inverse=True)
        scores = np.bincount(inverse, weights=weights).astype(np.float32)
        # The query's idf norm over each descriptor's nearest word (the first of its words: no second quantisation).
        _, nearest = np.unique(owners, return_index=True)
        query_norm = float(np.sqrt(np.sum(idf[words[nearest]] ** 2)))
        scores /= np.maximum(norms[candidates] * query_norm, 1e-12)
        scores[self.removed_[candidates]] = -1.0
        order = np.argsort(-scores, kind="stable")[:k]
        order = order[scores[order] > 0]
        return [self.names_[row] for row in candidates[order]], scores[order]

    def _votes(self, words: np.ndarray, signatures: np.ndarray, idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The photo and weight of each match of the query descriptors (``words``, ``signatures``) in the file.

        Each word's list is read once, as a slice (the lists are contiguous: read in file order, a memory-mapped
        file streams them), and compared with all the query's signatures of that word at once; only the close
        postings' photos are read. At a million photos a query touches some 16 million postings: per posting this
        is one pass of XOR, bit count and comparison.
        """
        order = np.argsort(words, kind="stable")
        words, signatures = words[order], signatures[order]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(words)) + 1, [len(words)]]).tolist()
        offsets = self.offsets_
        # Plain views of the (memory-mapped) lists: slicing a memmap object costs more than comparing a short list.
        listed_signatures, listed_photos = np.asarray(self.postings_signature_), np.asarray(self.postings_photo_)
        scale = max(self.max_hamming / 2, 1)
        photos, weights = [], []
        for first, stop in zip(bounds[:-1], bounds[1:]):
            word = int(words[first])
            start, end = int(offsets[word]), int(offsets[word + 1])
            if start == end:
                continue
            listed = listed_signatures[start:end]
            hamming = np.bitwise_count(listed[None, :] ^ signatures[first:stop, None])  # (query descriptors, list)
            near = hamming <= self.max_hamming
            _, where = np.nonzero(near)
            if not len(where):
                continue
            close = hamming[near].astype(np.float32)
            photos.append(listed_photos[start + where])
            weights.append(idf[word] ** 2 * np.exp(-(close / scale) ** 2))
        if not photos:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        return np.concatenate(photos), np.concatenate(weights)

    # -- saving -------------------------------------------------------------------------------------------------

    def save(self, folder: str | os.PathLike, *, source: dict | None = None, keep: Collection[int] = (),
             compact: bool = True) -> Path:
        """Write the index as a new generation of ``folder``, atomically (removed photos are dropped now).

        ``source`` (JSON-able) is kept in the description, e.g. which local-features parts it holds.
        ``keep``: numbers of older generations not to delete (those an archive's generations name).
        ``compact=False``, when the inverted lists are those of the generation it was loaded
        from (photos only removed since), keeps the removed photos' entries (never returned:
        ``removed_`` marks them) and shares the lists' files with that generation (hard links),
        as an archive's removal shares its vectors: saving a removal is then quick at any size,
        and the next save that compacts drops them. Sets ``generation_`` to the new generation's name.
        """
        self._check_fitted()
        if not compact and self._lists_from is not None:
            try:
                return self._save(folder, source, keep, shared=self._lists_from)
            except FileNotFoundError:  # that generation was deleted meanwhile: written whole
                pass
        return self._save(folder, source, keep, shared=None)

    def _save(self, folder, source: dict | None, keep: Collection[int], shared: Path | None) -> Path:
        if shared is None:
            self._compact()
            idf, norms = self._idf_and_norms()
            arrays = {"top": self.top_, "children": self.children_, "child_start": self.child_start_,
                      "child_count": self.child_count_, "signature_bits": self.signature_bits_,
                      "offsets": self.offsets_, "postings_photo": self.postings_photo_,
                      "postings_signature": self.postings_signature_, "removed": self.removed_, "idf": idf,
                      "norms": norms}
        else:  # the removed marks only; the lists (and the idf weights, as they were) are the shared generation's
            arrays = {"removed": self.removed_}

        def write_files(staging: Path) -> dict:
            for name in _ARRAYS:
                if name in arrays:
                    np.save(staging / f"{name}.npy", np.asarray(arrays[name]), allow_pickle=False)
                else:
                    os.link(shared / f"{name}.npy", staging / f"{name}.npy")
            (staging / "names.json").write_text(json.dumps(self.names_), encoding="utf-8")
            return {"kind": "instance", "instance_format_version": FORMAT_VERSION, "params": self.get_params(),
                    "n_photos": len(self), "n_words": self.n_words_, "n_postings": int(len(self.postings_photo_)),
                    "source": source or {}}

        generation = write_generation(folder, write_files, keep=keep, kill_prefix="instance-index-")
        self.source_ = source or {}
        self.generation_ = generation.name
        self._lists_from = generation  # the lists in memory are those written (or linked) there
        return generation

    @classmethod
    def load(cls, folder: str | os.PathLike, *, mmap: bool = True, generation: str | None = None) -> InstanceIndex:
        """Read an index saved by :meth:`save`; its inverted lists are memory-mapped by default (read on use).

        ``generation`` (a name such as ``gen-000003``, what ``generation_`` holds) reads that
        generation rather than the live one (IndexDirectoryError when it is gone).
        """
        if generation is None:
            generation, info = read_generation(folder)
        else:
            generation, info, lease = open_named_generation(folder, generation)
            release(lease)  # a reader that must keep it holds its own lease (skimgfeat.archive.Archive)
        if info.get("kind") != "instance" or info.get("instance_format_version") != FORMAT_VERSION:
            raise ValueError(f"{os.fspath(folder)!r} is not an instance index of format {FORMAT_VERSION} "
                             f"(delete it: it is made again from the local features)")
        index = cls(**info["params"])
        arrays = {name: np.load(generation / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
                  for name in _ARRAYS}
        index.top_, index.children_ = np.asarray(arrays["top"]), np.asarray(arrays["children"])
        index.child_start_, index.child_count_ = np.asarray(arrays["child_start"]), np.asarray(arrays["child_count"])
        index.signature_bits_ = np.asarray(arrays["signature_bits"])
        index.n_words_ = int(info["n_words"])
        index.offsets_ = np.asarray(arrays["offsets"])
        index.postings_photo_, index.postings_signature_ = arrays["postings_photo"], arrays["postings_signature"]
        index.removed_ = np.array(arrays["removed"])
        index.names_ = json.loads((generation / "names.json").read_text(encoding="utf-8"))
        index._row_of = {name: row for row, name in enumerate(index.names_) if not index.removed_[row]}
        index._idf = np.asarray(arrays["idf"])
        index._norms = np.asarray(arrays["norms"])
        index.source_ = info.get("source", {})
        index.generation_ = generation.name
        index._lists_from = generation
        return index

    def get_params(self) -> dict:
        """The constructor's parameters."""
        return {"branching": self.branching, "max_words": self.max_words, "query_words": self.query_words,
                "max_hamming": self.max_hamming,
                "training_descriptors": self.training_descriptors, "iterations": self.iterations,
                "random_state": self.random_state}

    # -- internals ----------------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "top_"):
            raise ValueError("this InstanceIndex has no vocabulary yet: call fit_vocabulary first")

    def _clear(self) -> None:
        self.names_: list[str] = []
        self._row_of: dict[str, int] = {}
        self.removed_ = np.zeros(0, bool)
        self.offsets_ = np.zeros(self.n_words_ + 1, np.int64)
        self.postings_photo_ = np.empty(0, np.int32)
        self.postings_signature_ = np.empty(0, np.uint64)
        self._norms = None
        self.source_ = {}
        self.generation_ = None
        self._lists_from: Path | None = None  # the saved generation whose inverted lists these are

    def _merge(self, words: np.ndarray, photos: np.ndarray, signatures: np.ndarray) -> None:
        """Merge new photos' postings into the word-sorted lists (new photos have the largest numbers)."""
        order = np.argsort(words, kind="stable")
        words, photos, signatures = words[order], photos[order], signatures[order]
        # Inserted at the end of each word's list: the lists stay sorted by photo number.
        where = self.offsets_[words.astype(np.int64) + 1]
        self.postings_photo_ = np.insert(np.asarray(self.postings_photo_), where, photos)
        self.postings_signature_ = np.insert(np.asarray(self.postings_signature_), where, signatures)
        self.offsets_ = self.offsets_ + np.concatenate([[0], np.cumsum(np.bincount(words,
                                                                                   minlength=self.n_words_))])
        self._norms = None
        self._lists_from = None

    def _compact(self) -> None:
        """Drop the postings of removed photos (their numbers stay taken, so names_ keeps its order)."""
        if not self.removed_.any():
            return
        photos = np.asarray(self.postings_photo_)
        keep = ~self.removed_[photos]
        if keep.all():
            return
        word_of = np.repeat(np.arange(self.n_words_), np.diff(self.offsets_))
        self.postings_photo_ = photos[keep]
        self.postings_signature_ = np.asarray(self.postings_signature_)[keep]
        self.offsets_ = np.concatenate([[0], np.cumsum(np.bincount(word_of[keep], minlength=self.n_words_))])
        self._norms = None
        self._lists_from = None

    def _idf_and_norms(self) -> tuple[np.ndarray, np.ndarray]:
        """Each word's idf and each photo's idf norm, computed again after the index changed."""
        if self._norms is None:
            self._compact()
            lengths = np.diff(self.offsets_)
            self._idf = _idf(_photos_per_word(np.asarray(self.postings_photo_), self.offsets_), len(self))
            squares = np.bincount(np.asarray(self.postings_photo_), weights=np.repeat(self._idf ** 2, lengths),
                                  minlength=len(self.names_))
            self._norms = np.sqrt(squares).astype(np.float32)
        return self._idf, self._norms


def _idf(photos_per_word: np.ndarray, n_photos: int) -> np.ndarray:
    """log((photos + 1) / photos holding the word): a word on every photo weighs almost nothing."""
    return np.log((n_photos + 1) / np.maximum(photos_per_word, 1)).astype(np.float32)


def _photos_per_word(photos: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many distinct photos each word's list holds (a list is sorted by photo number): in one pass."""
    first_of_list = np.zeros(len(photos), bool)
    first_of_list[offsets[:-1][np.diff(offsets) > 0]] = True
    new_photo = np.ones(len(photos), bool)
    new_photo[1:] = photos[1:] != photos[:-1]
    word_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    return np.bincount(word_of[new_photo | first_of_list], minlength=len(offsets) - 1)


def _nearest(descriptors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The nearest centre (Hamming) of each descriptor, with OpenCV's brute-force matcher."""
    cv2 = import_cv2()
    matches = cv2.BFMatcher(cv2.NORM_HAMMING).match(np.ascontiguousarray(descriptors),
                                                     np.ascontiguousarray(centres))
    nearest = np.zeros(len(descriptors), np.int64)
    nearest[[match.queryIdx for match in matches]] = [match.trainIdx for match in matches]
    return nearest


def _nearest_k(descriptors: np.ndarray, centres: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest centres of each descriptor (fewer where there are fewer centres): centres and the row
    of the descriptor each belongs to."""
    if k == 1:
        return _nearest(descriptors, centres), np.arange(len(descriptors))
    cv2 = import_cv2()
    found = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(np.ascontiguousarray(descriptors),
                                                      np.ascontiguousarray(centres), k=min(k, len(centres)))
    pairs = [(match.trainIdx, match.queryIdx) for matches in found for match in matches]
    nearest, owner = np.asarray(pairs, dtype=np.int64).reshape(-1, 2).T
    return nearest, owner


def _k_majority(descriptors: np.ndarray, n_centres: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """``n_centres`` binary centres of ``descriptors``: k-means under the Hamming distance, by bitwise majority."""
    n_centres = min(n_centres, len(descriptors))
    centres = descriptors[rng.choice(len(descriptors), n_centres, replace=False)].copy()
    for _ in range(iterations):
        nearest = _nearest(descriptors, centres)
        order = np.argsort(nearest, kind="stable")
        members = np.bincount(nearest, minlength=n_centres)
        # Per centre, the count of ones of each bit over its members: differences of a running sum (far faster
        # than a reduceat over rows).
        bits = np.ascontiguousarray(np.unpackbits(descriptors[order], axis=1).T)  # one row per bit: sums run along
        running = np.zeros((8 * DESCRIPTOR_BYTES, len(descriptors) + 1), np.int32)
        np.cumsum(bits, axis=1, dtype=np.int32, out=running[:, 1:])
        ends = np.cumsum(members)
        ones = (running[:, ends] - running[:, ends - members]).T
        occupied = members > 0
        centres[occupied] = np.packbits((2 * ones[occupied] > members[occupied, None]).astype(np.uint8), axis=1)
    return centres


def local_features_source(store: LocalFeatureStore, *, without: Collection[str] = ()) -> dict:
    """What an instance index built from ``store`` holds: its part files with their sizes and times.

    ``without``: part files left out (a compaction's parts that are deleted once the archive moved on).
    """
    return {part.name: [part.stat().st_size, part.stat().st_mtime_ns]
            for part in sorted(Path(store.folder).glob("part-*.npz")) if part.name not in without}


def instance_index_for(store: LocalFeatureStore, folder: str | os.PathLike | None = None, *,
                       keep: Collection[int] = (), start: str | None = None, **parameters) -> InstanceIndex:
    """The instance index of a local-features folder, made or brought up to date and saved in ``folder``.

    ``folder`` defaults to ``instance_index`` beside the local-features folder. A saved
    index made with the same parameters whose source parts are all still there unchanged
    is used as it is, or extended with the photos of new parts (its vocabulary kept);
    otherwise it is made again, the vocabulary trained on the store's descriptors.
    Parameters that only change a search (``query_words``, ``max_hamming``) are applied
    to a saved index. Two processes do not make it at once (a lock beside it). ``keep``:
    generations not to delete when a new one is saved (see :meth:`InstanceIndex.save`).
    ``start``: the saved generation to begin from rather than the live one (an archive's
    writer begins from the one its live generation names: what a writer killed since left
    is not taken over).
    """
    folder = Path(folder) if folder is not None else Path(store.folder).parent / INSTANCE_INDEX_DIR
    wanted = InstanceIndex(**parameters).get_params()
    with holding(folder.parent / f".{folder.name}.lock", timeout=LOCK_SECONDS):
        index = _brought_up_to_date(store, folder, wanted, keep, start)
    for name in SEARCH_PARAMETERS:
        setattr(index, name, wanted[name])
    return index


def _brought_up_to_date(store: LocalFeatureStore, folder: Path, wanted: dict, keep: Collection[int],
                        start: str | None) -> InstanceIndex:
    source = local_features_source(store)
    index = None
    for generation in ([start] if start else []) + [None]:
        if index is None and (folder / "CURRENT").is_file():
            try:
                index = InstanceIndex.load(folder, generation=generation)
            except (ValueError, OSError):
                index = None
    built_alike = index is not None and all(index.get_params()[name] == value for name, value in wanted.items()
                                            if name not in SEARCH_PARAMETERS)
    if built_alike and index.source_ == source:
        return index
    if built_alike and all(source.get(part) == stamp for part, stamp in index.source_.items()):
        new_parts = [part for part in source if part not in index.source_]
        index = InstanceIndex.load(folder, mmap=False, generation=index.generation_)
        names = store.paths_in_parts(new_parts)
    else:
        index = InstanceIndex(**wanted)
        names = store.paths()
        index.fit_vocabulary(store.training_descriptors(index.training_descriptors, index.max_words,
                                                        seed=index.random_state))
    for start in range(0, len(names), 1024):
        chunk = names[start:start + 1024]
        index.add(chunk, [store[name] for name in chunk])
    index.save(folder, source=source, keep=keep)
    return index


def available_instance_index(store: LocalFeatureStore, *, keep: Collection[int] = (),
                             start: str | None = None) -> InstanceIndex | None:
    """:func:`instance_index_for` the store, or None while it cannot have one.

    None for a store without photos, one whose photos have too few descriptors for a
    vocabulary (a handful of plain photos), or a read-only folder without a saved index:
    then a search has the CNN shortlist alone.
    """
    if not len(store):
        return None
    try:
        return instance_index_for(store, keep=keep, start=start)
    except (ValueError, OSError):
        return None
