"""timm and OpenCLIP models wherever torchvision ones work: default backend, pickles, CLI.

Random weights (no model hub here); parity with the libraries' own pipelines is in
test_recipe_parity.py. The smallest networks of each kind keep the tests quick: timm's own
test models (``test_vit``, ``test_resnet``: the same classes as ViT and ResNet, a few
hundred thousand parameters) and OpenCLIP's ViT-S-32.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from _launcher import run_cli, run_python

from skimgfeat import CNNImageEmbedder
from skimgfeat.registry import network_blocks

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}


def run_offline(code: str) -> subprocess.CompletedProcess:
    """``python -c CODE`` in a child process, offline; the launcher has imported neither timm nor OpenCLIP."""
    return run_python(code, env={**os.environ, **OFFLINE}, timeout=300)


def test_importing_skimgfeat_imports_neither_library():
    result = subprocess.run(  # a fresh interpreter: nothing imported before skimgfeat
        [sys.executable, "-c",
        "import sys, skimgfeat\n"
        "skimgfeat.CNNImageEmbedder(weights=None).fit()\n"
        "print(sorted(name for name in ('timm', 'open_clip') if name in sys.modules))"],
        capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("model_name", "extra"), [("timm:resnet18", "timm"), ("open_clip:ViT-B-32", "clip")])
def test_a_missing_library_names_the_extra_to_install(model_name, extra):
    library = model_name.split(":")[0]
    result = run_offline(
        f"import sys; sys.modules[{library!r}] = None  # as if it were not installed\n"
        "from skimgfeat import CNNImageEmbedder\n"
        f"CNNImageEmbedder({model_name!r}, weights=None).fit()"
    )
    assert result.returncode != 0
    assert f"pip install 'skimgfeat[{extra}]'" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("model_name", ["timm:test_vit", "open_clip:ViT-S-32"])
def test_the_default_cpu_backend_runs_transformers_exported_to_onnx(model_name, synthetic_photos):
    paths = [str(p) for p in synthetic_photos[:5]]  # batches of 3 and 2: the exported batch axis is dynamic
    eager = CNNImageEmbedder(model_name, weights=None, random_state=0, backend="eager", batch_size=3).fit()
    default = CNNImageEmbedder(model_name, weights=None, random_state=0, device="cpu", batch_size=3).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        fast = default.transform(paths)
    assert type(default._runner().module).__name__ == "OnnxRuntimeModule"
    expected = eager.transform(paths)
    cosine = (fast * expected).sum(1) / (np.linalg.norm(fast, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.9999


def test_a_fitted_timm_embedder_pickles_self_contained_and_loads_offline(synthetic_photos, tmp_path):
    embedder = CNNImageEmbedder("timm:test_vit", weights=None, random_state=0, backend="eager").fit()
    paths = [str(p) for p in synthetic_photos[:3]]
    np.save(tmp_path / "expected.npy", embedder.transform(paths))
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(embedder))
    result = run_offline(
        "import pickle, sys, numpy as np\n"
        f"embedder = pickle.loads(open({str(tmp_path / 'model.pkl')!r}, 'rb').read())\n"
        f"got = embedder.transform({paths!r})\n"
        f"assert np.array_equal(got, np.load({str(tmp_path / 'expected.npy')!r})), 'features differ'\n"
        "print(embedder.model_info_['model_name'])"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "timm:test_vit"


def test_open_clip_pickles_hold_the_image_tower_only():
    embedder = CNNImageEmbedder("open_clip:ViT-S-32", weights=None, random_state=0).fit()
    n_parameters = sum(p.numel() for p in embedder.model_.parameters())
    assert 20e6 < n_parameters < 25e6  # the ViT-S/32 image tower; the whole CLIP model is 63M
    assert len(pickle.dumps(embedder)) < n_parameters * 4 * 1.05


def test_model_info_records_the_recipe_and_rebuilds_the_embedder():
    embedder = CNNImageEmbedder("timm:test_vit", weights=None, random_state=0, crop_size=144).fit()
    info = json.loads(json.dumps(embedder.model_info_))
    assert info["preprocessing"]["resize"] == 168 and info["preprocessing"]["crop"] == 144
    assert info["preprocessing"]["interpolation"] == "bicubic"
    assert info["recipe_source"].startswith("timm resolve_data_config") and "crop_size=144" in info["recipe_source"]
    rebuilt = CNNImageEmbedder(**info["params"]).fit()
    assert rebuilt.model_info_["parameters_sha256"] == info["parameters_sha256"]


def test_timm_blocks_let_the_last_ones_train():
    embedder = CNNImageEmbedder("timm:test_resnet", weights=None, random_state=0).fit()
    blocks = network_blocks(embedder.model_name, embedder.model_)
    blocks[-1].requires_grad_(True)
    assert all(p.requires_grad for p in embedder.model_.layer4[-1].parameters())
    assert not any(p.requires_grad for p in embedder.model_.conv1.parameters())


def test_the_cli_extracts_with_a_timm_model(synthetic_photos, tmp_path):
    folder = synthetic_photos[0].parent
    result = run_cli("extract", folder, "-o", tmp_path / "out", "--pattern", "*.jpg", "--model", "timm:test_resnet",
                     "--weights", "none", "--quiet", env={**os.environ, **OFFLINE}, timeout=300)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(next((tmp_path / "out").glob("*raw*.parquet")))
    assert len(table) == 3 and table.filter(like="img_feature_").shape[1] == 96
    info = json.loads(next((tmp_path / "out").glob("*model*.json")).read_text())
    assert info["model_name"] == "timm:test_resnet"


def test_models_lists_torchvision_names_and_how_to_name_the_others():
    result = run_cli("models", env={**os.environ, **OFFLINE}, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    efficientnet_b3 = next(line for line in lines if line.startswith("efficientnet_b3 ")).split()
    assert efficientnet_b3[1:3] == ["1536", "IMAGENET1K_V1"]
    assert "320 shorter side -> crop 300, bicubic" in " ".join(lines)
    assert any("timm:<name>" in line for line in lines) and any("open_clip:<arch>" in line for line in lines)


@pytest.mark.parametrize(
    ("model_name", "weights", "message"),
    [
        ("timm:no_such_net", None, "unknown timm model 'no_such_net'"),
        ("timm:resnet18", "IMAGENET1K_V1", "unknown weights 'IMAGENET1K_V1' for timm:resnet18"),
        ("open_clip:ViT-B-32", "laion5b", "unknown weights 'laion5b' for open_clip:ViT-B-32; .* laion2b_s34b_b79k"),
        ("open_clip:NoSuchArch", None, "unknown OpenCLIP architecture 'NoSuchArch'"),
    ],
)
def test_unknown_names_and_weights_are_clear_errors(model_name, weights, message):
    with pytest.raises(ValueError, match=message):
        CNNImageEmbedder(model_name, weights=weights).fit()
