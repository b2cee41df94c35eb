"""Local features of photos: AKAZE keypoints and binary descriptors, stored once per photo.

Recognising one physical object in a new photo (a re-listed lot) needs more than a
global CNN vector: a geometric check that many small patches of two photos match under
one perspective transform (:mod:`skimgfeat.matching.verification`). The patches are the
keypoints of OpenCV's AKAZE detector (binary MLDB descriptors on a nonlinear scale
space), found on a grayscale copy of the photo whose long side is at most ``max_side``
pixels, at most ``max_keypoints`` per photo (the strongest), so a photo's entry has a
bounded size (1000 keypoints: 64 kB of descriptors and 8 kB of positions). AKAZE was
chosen over ORB, BRISK and SIFT by measurement (see docs/object-matching.md).

``skimgfeat extract --local-features`` (or :func:`write_local_features`) stores them in
a sidecar folder beside the feature table, ``OUT/local_features``:

* ``settings.json``: the detector and its settings; features made with other settings
  are refused rather than mixed;
* ``part-000000.npz``, ...: one part per batch of photos, each written atomically, so an
  interrupted run keeps every finished part and the next run computes only the photos
  not stored yet, or changed since (each photo's stamp is stored, as in extract's
  checkpoints).

Parts are plain arrays loaded with ``allow_pickle=False``. OpenCV with its contrib
modules, where OpenCV 5 keeps AKAZE (the ``match`` extra, ``pip install "skimgfeat[match]"``),
is imported only when features are computed or matched.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.image_loading import load_rgb_image
from ..exceptions import ImageLoadError
from ..storage.checkpoint import file_stamps
from ..storage.io import atomic_path, write_json

LOCAL_FEATURES_DIR = "local_features"
SETTINGS_FILE = "settings.json"
# 3: AKAZE at 512 px (version 2 stored ORB at 640 px, version 1 ORB with 500 keypoints)
FORMAT_VERSION = 3
DEFAULT_MAX_KEYPOINTS = 1000
DEFAULT_MAX_SIDE = 512
# Parts a LocalFeatureStore keeps open (their keypoints memory-mapped): the most recently used.
DEFAULT_CACHED_PARTS = 16
# AKAZE's MLDB descriptor (486 binary comparisons, 61 bytes) padded with zero bytes: the same Hamming distances,
# matched a quarter faster by OpenCV (measured).
DESCRIPTOR_BYTES = 64
# AKAZE's detector response threshold and sublevels per octave (OpenCV's defaults: 0.001 and 4): measured, see
# the docs (two sublevels halve the time; the lower threshold brings back keypoints on small objects).
AKAZE_THRESHOLD = 0.0002
AKAZE_OCTAVE_LAYERS = 2
EXTRACT_COMMAND = "skimgfeat extract IMAGE_DIR -o OUT --local-features"


class MissingLocalFeaturesError(FileNotFoundError):
    """The local features a match needs were never computed."""


def import_cv2():
    """OpenCV, or an ImportError that says which extra installs it."""
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            'object matching needs OpenCV: pip install "skimgfeat[match]" (opencv-contrib-python-headless)'
        ) from error
    return cv2


def _akaze(cv2):
    """OpenCV's AKAZE detector (in the main module up to OpenCV 4, in the contrib modules since OpenCV 5)."""
    create = getattr(cv2, "AKAZE_create", None) or getattr(getattr(cv2, "xfeatures2d", None), "AKAZE_create", None)
    if create is None:
        raise ImportError(
            f"object matching needs OpenCV's AKAZE, which OpenCV {cv2.__version__} lacks: "
            'pip install "skimgfeat[match]" (opencv-contrib-python-headless, in place of opencv-python-headless)'
        )
    return create(threshold=AKAZE_THRESHOLD, nOctaveLayers=AKAZE_OCTAVE_LAYERS)


@dataclass(frozen=True)
class LocalFeatures:
    """The keypoints of one photo.

    Attributes
    ----------
    points : ndarray of shape (n_keypoints, 2), float32
        Keypoint positions (x, y) in the detection frame: the photo scaled by ``scale``.
    descriptors : ndarray of shape (n_keypoints, 64), uint8
        AKAZE binary descriptors (61 bytes and 3 zero bytes), one row per keypoint.
    image_size : (int, int)
        Width and height of the detection frame.
    scale : float
        Detection frame pixels per photo pixel (1.0 when the photo was small enough).
    error : str
        Why the photo could not be read ("" when it was); such a photo has no keypoints.
    """

    points: np.ndarray
    descriptors: np.ndarray
    image_size: tuple[int, int]
    scale: float = 1.0
    error: str = ""

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def empty(cls, error: str = "") -> LocalFeatures:
        """No keypoints (an unreadable photo, or one without texture)."""
        return cls(*_no_points(), (0, 0), 1.0, error)


def detect_local_features(
    image,
    *,
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    max_side: int = DEFAULT_MAX_SIDE,
) -> LocalFeatures:
    """AKAZE keypoints of one photo.

    Parameters
    ----------
    image : str, os.PathLike, PIL.Image.Image or ndarray
        An image file (read with the package's loader: EXIF orientation, transparency
        onto white), a PIL image, or a grayscale or RGB uint8 array.
    max_keypoints : int, default=1000
        At most this many keypoints, the strongest.
    max_side : int, default=512
        The photo is shrunk so that its long side is at most this many pixels.

    Returns
    -------
    LocalFeatures
        Possibly with no keypoints (a blank wall, a tiny thumbnail): not an error.

    Raises
    ------
    ImageLoadError
        When ``image`` is a file that cannot be read.

    Examples
    --------
    >>> import numpy as np
    >>> features = detect_local_features(np.full((40, 60), 128, np.uint8))
    >>> len(features), features.image_size
    (0, (60, 40))
    """
    cv2 = import_cv2()
    gray, decoded_scale = _grayscale(image, max_side)
    height, width = gray.shape
    shrink = min(1.0, max_side / max(height, width, 1))
    if shrink < 1.0:
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    scale = shrink * decoded_scale  # detection frame against the photo's own pixels
    keypoints, descriptors = _akaze(cv2).detectAndCompute(gray, None)
    if descriptors is None or not keypoints:
        return LocalFeatures(*_no_points(), (gray.shape[1], gray.shape[0]), scale)
    if len(keypoints) > max_keypoints:
        strongest = np.argsort([-keypoint.response for keypoint in keypoints], kind="stable")[:max_keypoints]
        keypoints, descriptors = [keypoints[i] for i in strongest], descriptors[strongest]
    descriptors = np.pad(descriptors, ((0, 0), (0, DESCRIPTOR_BYTES - descriptors.shape[1])))
    points = np.asarray([keypoint.pt for keypoint in keypoints], dtype=np.float32)
    return LocalFeatures(points, np.ascontiguousarray(descriptors, dtype=np.uint8), (gray.shape[1], gray.shape[0]),
                         scale)


def _no_points() -> tuple[np.ndarray, np.ndarray]:
    return np.empty((0, 2), np.float32), np.empty((0, DESCRIPTOR_BYTES), np.uint8)


def _grayscale(image, max_side: int) -> tuple[np.ndarray, float]:
    """The photo in gray levels, and the scale it was decoded at (below 1 for a large JPEG file).

    A JPEG file is decoded at the smallest DCT scale that keeps ``max_side``: a 1600 px
    phone photo decodes in half the time at half scale, and is shrunk to ``max_side`` anyway.
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = np.asarray(image)
        if array.ndim == 3:
            array = np.asarray(Image.fromarray(array.astype(np.uint8)).convert("L"))
        return np.ascontiguousarray(array, dtype=np.uint8), 1.0
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L")), 1.0
    stored_size = _stored_size(image)
    draft = None
    if stored_size is not None:  # the reduced image keeps a long side of at least max_side
        long_side = max(*stored_size, 1)
        draft = tuple(max(1, -(-side * max_side // long_side)) for side in stored_size)
    with load_rgb_image(image, draft_size=draft) as rgb:  # errors name the file and the reason
        gray = np.asarray(rgb.convert("L"))
    return gray, 1.0 if stored_size is None else max(gray.shape) / max(*stored_size, 1)


def _stored_size(path) -> tuple[int, int] | None:
    """The size an image file declares (before any EXIF rotation), or None where it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as header:
            return header.size
    except Exception:  # noqa: BLE001 - the loader then names the file and the reason
        return None


# -- the sidecar folder ---------------------------------------------------------------


def local_features_settings(max_keypoints: int = DEFAULT_MAX_KEYPOINTS, max_side: int = DEFAULT_MAX_SIDE) -> dict:
    """What changes the stored features: recorded in ``settings.json`` and checked on reuse."""
    return {"format_version": FORMAT_VERSION, "detector": "akaze", "threshold": AKAZE_THRESHOLD,
            "octave_layers": AKAZE_OCTAVE_LAYERS, "max_keypoints": int(max_keypoints), "max_side": int(max_side),
            "jpeg_draft": True}


class LocalFeatureStore:
    """The local features stored in a sidecar folder, looked up by ``image_path``.

    Parameters
    ----------
    folder : str or os.PathLike
        A folder written by :func:`write_local_features` (``OUT/local_features``).

    Raises
    ------
    MissingLocalFeaturesError
        When the folder holds no local features, or local features of an older format
        (made by an earlier version of skimgfeat); the message names the command that
        makes them.

    Examples
    --------
    >>> store = LocalFeatureStore("out/local_features")  # doctest: +SKIP
    >>> store["dvd001_canon.jpg"].points.shape  # doctest: +SKIP
    (1000, 2)
    """

    def __init__(self, folder: str | os.PathLike, *, max_cached_parts: int = DEFAULT_CACHED_PARTS) -> None:
        self.folder = Path(folder)
        self.max_cached_parts = max_cached_parts
        settings = self.folder / SETTINGS_FILE
        if not settings.is_file():
            raise MissingLocalFeaturesError(
                f"no local features in {os.fspath(self.folder)!r}: make them with `{EXTRACT_COMMAND}` "
                "(or skimgfeat.matching.local_features.write_local_features)"
            )
        self.settings = json.loads(settings.read_text(encoding="utf-8"))
        version = self.settings.get("format_version")
        if version != FORMAT_VERSION:
            raise MissingLocalFeaturesError(
                f"the local features in {os.fspath(self.folder)!r} are of format version {version!r}, this version "
                f"of skimgfeat reads {FORMAT_VERSION}: delete that folder and make them again with "
                f"`{EXTRACT_COMMAND}`"
            )
        self._parts: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()
        self._scan()

    def _scan(self) -> None:
        """Where each photo's current entry is: its part file and row."""
        where: dict[str, tuple[Path, int]] = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as npz:
                    for row, path in enumerate(npz["image_path"].tolist()):
                        where[path] = (part, row)  # a later part (the file changed) wins
            except FileNotFoundError:
                continue  # deleted by a compaction since it was listed: its photos are in a newer part
        self._where = where

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, image_path) -> bool:
        return str(image_path) in self._where

    def paths(self) -> list[str]:
        """The ``image_path`` of every stored photo."""
        return list(self._where)

    def __getitem__(self, image_path: str) -> LocalFeatures:
        try:
            part, row = self._where[str(image_path)]
        except KeyError:
            raise MissingLocalFeaturesError(
                f"no local features for {image_path!r} in {os.fspath(self.folder)!r}: add them with "
                f"`{EXTRACT_COMMAND}` on its folder"
            ) from None
        try:
            arrays = self._part(part)
        except FileNotFoundError:  # a compaction (skimgfeat.archive) rewrote that part: the entry is in a newer one
            self._scan()
            if str(image_path) not in self._where:
                raise MissingLocalFeaturesError(f"no local features for {image_path!r} in "
                                                f"{os.fspath(self.folder)!r} any more (compacted away)") from None
            part, row = self._where[str(image_path)]
            arrays = self._part(part)
        return _entry(arrays, row)

    @property
    def cached_parts(self) -> int:
        """How many part files are open now (at most ``max_cached_parts``)."""
        return len(self._parts)

    def paths_in_parts(self, parts: Sequence[str]) -> list[str]:
        """The ``image_path`` of the photos whose current entry is in one of the part files named ``parts``."""
        wanted = set(parts)
        return [path for path, (part, _) in self._where.items() if part.name in wanted]

    def training_descriptors(self, n: int, per_photo: int, *, seed: int = 0) -> np.ndarray:
        """About ``n`` descriptors drawn evenly over the stored photos, of each photo's ``per_photo`` strongest.

        For training a visual vocabulary (:class:`~skimgfeat.matching.instance_index.InstanceIndex`): part
        by part, so that memory holds the sample only.
        """
        rng = np.random.default_rng(seed)
        share = min(1.0, n / max(1, len(self) * per_photo))
        drawn = []
        for part in sorted({part for part, _ in self._where.values()}):
            arrays = self._part(part)
            offsets = arrays["offsets"]
            rows = np.concatenate([np.arange(start, min(stop, start + per_photo))
                                   for start, stop in zip(offsets[:-1], offsets[1:])] or [np.empty(0, np.int64)])
            if share < 1.0:
                rows = rows[rng.random(len(rows)) < share]
            drawn.append(np.asarray(arrays["descriptors"][np.sort(rows)]))
        return np.concatenate(drawn) if drawn else np.empty((0, DESCRIPTOR_BYTES), np.uint8)

    def _part(self, part: Path) -> dict[str, np.ndarray]:
        """A part's arrays: the small ones read, the keypoints mapped from the file (read on use).

        At most ``max_cached_parts`` parts are kept open, the most recently used: an archive of
        millions of photos is matched without holding its descriptors in memory.
        """
        if part in self._parts:
            self._parts.move_to_end(part)
            return self._parts[part]
        self._parts[part] = _read_part(part)
        while len(self._parts) > max(1, self.max_cached_parts):
            self._parts.popitem(last=False)
        return self._parts[part]


def _read_part(part: Path) -> dict[str, np.ndarray]:
    """The arrays of a part file; ``points`` and ``descriptors`` memory-mapped (np.savez stores them unpacked)."""
    arrays = {}
    with np.load(part, allow_pickle=False) as npz, zipfile.ZipFile(part) as archive:
        for name in npz.files:
            mapped = _mapped_member(part, archive, name) if name in ("points", "descriptors") else None
            arrays[name] = mapped if mapped is not None else npz[name]
    return arrays


def _mapped_member(part: Path, archive: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """A stored (uncompressed) ``.npy`` member of a zip file, memory-mapped; None where it cannot be."""
    info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
        return None
    with open(part, "rb") as handle:
        handle.seek(info.header_offset)
        local_header = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version not in ((1, 0), (2, 0)):
            return None
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
    if fortran_order or dtype.hasobject or not np.prod(shape):
        return None
    return np.memmap(part, dtype=dtype, mode="r", offset=offset, shape=shape)


def write_local_features(
    paths: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    *,
    image_dir: str | os.PathLike | None = None,
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS,
    max_side: int = DEFAULT_MAX_SIDE,
    part_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Compute and store the local features of the photos not stored yet.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        The photo files.
    folder : str or os.PathLike
        The sidecar folder, created if needed (``OUT/local_features``).
    image_dir : str, os.PathLike or None
        The folder the stored ``image_path`` keys are relative to (as in the feature
        table); None: the paths as given.
    max_keypoints, max_side : int
        See :func:`detect_local_features`. A folder made with other values is refused.
    part_size : int, default=256
        Photos per part file: what an interruption can lose at most.
    on_progress : callable or None
        Called with the number of photos finished after each photo.

    Returns
    -------
    int
        How many photos were computed now (the others were already stored, unchanged).
        A photo that cannot be read is stored without keypoints and its error; it is
        tried again by the next run.

    Examples
    --------
    >>> write_local_features(["photos/a.jpg"], "out/local_features", image_dir="photos")  # doctest: +SKIP
    1
    """
    folder = Path(folder)
    settings = local_features_settings(max_keypoints, max_side)
    _check_settings(folder, settings)
    keys = [_key(path, image_dir) for path in paths]
    stamps = file_stamps(paths)
    done = _stored_stamps(folder)
    todo = [i for i, (key, stamp) in enumerate(zip(keys, stamps)) if done.get(key) != (stamp, "")]
    next_part = _next_part_number(folder)
    for start in range(0, len(todo), part_size):
        chunk = todo[start:start + part_size]
        features = []
        for i in chunk:
            try:
                features.append(detect_local_features(paths[i], max_keypoints=max_keypoints, max_side=max_side))
            except ImageLoadError as error:
                features.append(LocalFeatures.empty(f"{error.reason} ({error.detail})" if error.detail
                                                    else error.reason))
            if on_progress is not None:
                on_progress(1)
        _write_part(folder / f"part-{next_part:06d}.npz", [keys[i] for i in chunk], [stamps[i] for i in chunk],
                    features)
        next_part += 1
    return len(todo)


def compact_local_features(folder: str | os.PathLike, live: Collection[str]) -> tuple[list[str], list[str]]:
    """Rewrite the part files of ``folder`` that hold more than the current entries of ``live`` photos.

    A part holding a photo not in ``live`` (removed from an archive), or an entry a later
    part replaced, has its current entries of ``live`` photos written to a new part
    (atomically, numbered after every other part, so that it wins over the old one
    while both are there). The old parts are left in place for the caller to delete
    (:func:`delete_parts`) once no reader needs them. Idempotent: run again after an
    interruption, an old part whose entries were rewritten holds only entries that a
    newer part replaced or that are not live, and is listed again with nothing to write.

    Returns
    -------
    written, retired : list of str
        The names of the parts written and of the old parts to delete.
    """
    folder = Path(folder)
    if not (folder / SETTINGS_FILE).is_file():
        return [], []
    store = LocalFeatureStore(folder)
    live = set(live)
    written, retired = [], []
    next_part = _next_part_number(folder)
    for part in sorted(folder.glob("part-*.npz")):
        with np.load(part, allow_pickle=False) as npz:
            names = npz["image_path"].tolist()
        kept = [row for row, name in enumerate(names) if name in live and store._where.get(name) == (part, row)]
        if len(kept) == len(names):
            continue
        if kept:
            arrays = _read_part(part)
            target = folder / f"part-{next_part:06d}.npz"
            _write_part(target, [names[row] for row in kept], [str(arrays["stamp"][row]) for row in kept],
                        [_entry(arrays, row) for row in kept])
            written.append(target.name)
            next_part += 1
        retired.append(part.name)
    return written, retired


def delete_parts(folder: str | os.PathLike, parts: Sequence[str]) -> None:
    """Delete the part files named ``parts`` (those already gone are skipped): a compaction's old parts."""
    for name in parts:
        if name.startswith("part-") and name.endswith(".npz"):
            (Path(folder) / name).unlink(missing_ok=True)


def _entry(arrays: dict[str, np.ndarray], row: int) -> LocalFeatures:
    start, stop = arrays["offsets"][row], arrays["offsets"][row + 1]
    width, height = arrays["image_size"][row]
    return LocalFeatures(np.array(arrays["points"][start:stop]), np.array(arrays["descriptors"][start:stop]),
                         (int(width), int(height)), float(arrays["scale"][row]), str(arrays["error"][row]))


def _key(path, image_dir) -> str:
    """The photo's ``image_path`` as the feature table has it: relative to ``image_dir`` by its listed path.

    The listed path, not the resolved one: a symlinked photo (an archive of links into other folders) resolves
    outside ``image_dir`` and would either have no relative path or a different key than its table row.
    """
    if image_dir is None:
        return os.fspath(path)
    return relative_key(path, image_dir)


def relative_key(path: str | os.PathLike, image_dir: str | os.PathLike) -> str:
    """``path`` relative to ``image_dir``, as a POSIX string, without following symlinks.

    Raises
    ------
    ValueError
        When ``path`` is not under ``image_dir``.
    """
    path, image_dir = Path(os.path.abspath(path)), Path(os.path.abspath(image_dir))
    try:
        return path.relative_to(image_dir).as_posix()
    except ValueError:  # the folder itself given through a link: compare where both really are
        return path.parent.resolve().joinpath(path.name).relative_to(image_dir.resolve()).as_posix()


def _check_settings(folder: Path, settings: dict) -> None:
    saved_file = folder / SETTINGS_FILE
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        if saved.get("format_version") != settings["format_version"]:
            raise ValueError(
                f"{os.fspath(folder)!r} holds local features of format version {saved.get('format_version')!r}, "
                f"this version of skimgfeat writes {settings['format_version']}: delete that folder and run again"
            )
        if saved != settings:
            raise ValueError(
                f"{os.fspath(folder)!r} holds local features made with other settings ({saved} then, {settings} "
                "now); use the same settings or delete that folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(settings, saved_file)


def _stored_stamps(folder: Path) -> dict[str, tuple[str, str]]:
    stored = {}
    for part in sorted(folder.glob("part-*.npz")):
        with np.load(part, allow_pickle=False) as npz:
            for path, stamp, error in zip(npz["image_path"].tolist(), npz["stamp"].tolist(), npz["error"].tolist()):
                stored[path] = (stamp, error)
    return stored


def _next_part_number(folder: Path) -> int:
    parts = sorted(folder.glob("part-*.npz"))
    return int(parts[-1].stem.split("-")[1]) + 1 if parts else 0


def _write_part(path: Path, keys: list[str], stamps: list[str], features: list[LocalFeatures]) -> None:
    counts = [len(entry) for entry in features]
    arrays = {
        "image_path": np.asarray(keys, dtype=str),
        "stamp": np.asarray(stamps, dtype=str),
        "error": np.asarray([entry.error for entry in features], dtype=str),
        "image_size": np.asarray([entry.image_size for entry in features], dtype=np.int32).reshape(-1, 2),
        "scale": np.asarray([entry.scale for entry in features], dtype=np.float32),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "points": np.concatenate([entry.points for entry in features]).astype(np.float32).reshape(-1, 2),
        "descriptors": np.concatenate([entry.descriptors for entry in features]).astype(np.uint8)
        .reshape(-1, DESCRIPTOR_BYTES),
    }
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
