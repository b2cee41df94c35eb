"""Shared fixtures: real photos and weights from ../shared, skipped with a reason without them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKIMGFEAT_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet1k-dequantized.pth"
IMAGENET = SHARED / "images" / "imagenet-labelled"
GROCERY = SHARED / "images" / "grocery"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the project's shared test data; see ../shared/README.md)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The whole shared folder (photos and weights), as the gallery examples read it."""
    return _require(SHARED)


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    """Real ImageNet MobileNetV2 weights (dequantized from torchvision's int8 file)."""
    return _require(WEIGHTS)


@pytest.fixture(scope="session")
def imagenet_dir() -> Path:
    """100 labelled ImageNet photos, tiny to 2400 px, some grayscale."""
    return _require(IMAGENET)


@pytest.fixture(scope="session")
def grocery_photos() -> list[Path]:
    """Real shop photos of grocery products, about 348 px, sorted."""
    return sorted(_require(GROCERY / "train").rglob("*.jpg"))


@pytest.fixture(scope="session")
def synthetic_photos(tmp_path_factory) -> list[Path]:
    """Six small RGB JPEG/PNG files made here: for tests that must run without ../shared."""
    folder = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        base = np.linspace(0, 255, 80 * 60 * 3).reshape(60, 80, 3)
        pixels = np.clip(base * (i + 1) / 6 + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"item{i // 2}_{i % 2 + 1}.{'jpg' if i % 2 == 0 else 'png'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def grocery_items() -> tuple[list[list[str]], np.ndarray]:
    """24 items of 2-3 real shop photos each (two items per product class), and a price per item.

    The price is a function of the product class, so features that see the product can learn it.
    """
    listing = _require(GROCERY / "train.txt").read_text().splitlines()
    by_class: dict[int, list[str]] = {}
    for line in listing:
        relative, fine_id, _ = (part.strip() for part in line.split(","))
        by_class.setdefault(int(fine_id), []).append(str(GROCERY / relative))
    items, prices = [], []
    for fine_id in sorted(by_class)[:36:3]:
        photos = by_class[fine_id]
        items += [photos[0:3], photos[3:5]]
        prices += [10.0 + 3.0 * fine_id, 10.0 + 3.0 * fine_id]
    return items, np.asarray(prices)


@pytest.fixture(scope="session", autouse=True)
def private_artifact_cache(tmp_path_factory):
    """Prepared graphs and weight digests go to a folder of this test session, never ~/.cache."""
    from skimgfeat.storage.artifact_cache import CACHE_DIR_ENV

    previous = os.environ.get(CACHE_DIR_ENV)
    # One folder for all xdist workers of this run: a network exported by one is read back by the other.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder = shared / "artifact-cache"
    folder.mkdir(exist_ok=True)
    os.environ[CACHE_DIR_ENV] = str(folder)
    yield
    if previous is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = previous


ONNX_TEMPLATE_MODEL = "shufflenet_v2_x0_5"


@pytest.fixture(scope="session")
def traced_templates(private_artifact_cache) -> Path:
    """The ONNX template of ``ONNX_TEMPLATE_MODEL`` (random weights, 224 px), traced once for the whole run.

    Tracing a network for ONNX takes seconds and does not depend on its weights; the tests that
    export this architecture again (other weights, a private cache folder) start from this trace.
    The xdist workers share the artifact cache: the second to ask waits for the first one's trace.
    """
    from skimgfeat import CNNImageEmbedder
    from skimgfeat.storage.artifact_cache import CACHE_DIR_ENV

    CNNImageEmbedder(ONNX_TEMPLATE_MODEL, weights=None, random_state=0, device="cpu").fit().prepare()
    return Path(os.environ[CACHE_DIR_ENV]) / "onnx-template"


@pytest.fixture
def artifact_folder(tmp_path, monkeypatch, traced_templates) -> Path:
    """An artifact cache folder of this test's own, empty but for the session's traced template."""
    from skimgfeat.storage.artifact_cache import CACHE_DIR_ENV

    folder = tmp_path / "artifacts"
    shutil.copytree(traced_templates, folder / "onnx-template")
    monkeypatch.setenv(CACHE_DIR_ENV, str(folder))
    return folder
