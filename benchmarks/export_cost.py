"""Fixed cost per fit of the ONNX backend: export by torch.export, TorchScript export, artifact-cache hit.

Each measurement runs in a fresh process (imports included in the process, not in the
timing) and times ``CNNImageEmbedder(...).fit().prepare()`` on the CPU:

* ``torch.export``: an empty artifact cache, so the network is exported by the
  ``torch.export``-based exporter, checked against eager and stored;
* ``cache hit``: the same again with the cache that run filled (what every later fit,
  clone or unpickled copy on the machine pays);
* ``other weights``: the same architecture with other weights (``random_state=1``, as a
  fine-tune or another checkpoint would be) after the first export: its graph comes from
  the architecture's traced template, not from a new trace;
* ``torchscript export``: the deprecated exporter alone (``torch.onnx.export(...,
  dynamo=False)``) on the same network, for reference (what the export used to cost).

    python benchmarks/export_cost.py --models mobilenet_v2,shufflenet_v2_x1_0

Ratios within one run are what to compare; say the load (``uptime``) beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

_FIT = textwrap.dedent(
    """
    import json, sys, time
    from skimgfeat import CNNImageEmbedder
    import onnxscript, torch.onnx  # imported before timing: the process start is not the fit
    embedder = CNNImageEmbedder(sys.argv[1], weights=None, random_state=int(sys.argv[2]), device="cpu",
                                backend="onnxruntime")
    start = time.perf_counter()
    embedder.fit().prepare()
    print(json.dumps({"seconds": time.perf_counter() - start, "runtime": embedder.model_info_["runtime"]}))
    """
)

_LEGACY = textwrap.dedent(
    """
    import io, json, sys, time, warnings
    import torch
    from skimgfeat.registry import build_model
    model = build_model(sys.argv[1], None, 0).module.eval()
    example = torch.randn(2, 3, 224, 224)
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    torch.onnx.export(model, example, io.BytesIO(), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["features"], dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    print(json.dumps({"seconds": time.perf_counter() - start}))
    """
)


def _run(script: str, model: str, cache: str, seed: int = 0) -> dict:
    env = dict(os.environ, SKIMGFEAT_CACHE_DIR=cache)
    done = subprocess.run([sys.executable, "-c", script, model, str(seed)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mobilenet_v2")
    args = parser.parse_args()
    print("| model | torch.export (cold cache) s | cache hit s | other weights (template) s "
          "| TorchScript export alone s |")
    print("|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="skimgfeat-export-") as cache:
            cold = _run(_FIT, model, cache)
            warm = _run(_FIT, model, cache)
            other = _run(_FIT, model, cache, seed=1)
            legacy = _run(_LEGACY, model, cache)
        assert cold["runtime"].get("exporter") == "torch.export", cold
        print(f"| {model} | {cold['seconds']:.2f} | {warm['seconds']:.2f} | {other['seconds']:.2f} "
              f"| {legacy['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
