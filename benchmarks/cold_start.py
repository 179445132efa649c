"""Cold start of ``leukoseg classify`` on one 2592x1944 smear with the bundled model, beside the Keras path.

Each measurement is a fresh process started from the shell, as a user would run it:

- ``leukoseg classify IMAGE --out DIR``: end to end (start-up, reading, segmentation, features, NumPy
  inference of every model, FAB, outputs);
- the Keras path of the same CNN: a process that imports Keras (TensorFlow backend), rebuilds the bundled
  networks, loads their weights and predicts the same patches, which is what inference would cost if it needed
  TensorFlow.

    python benchmarks/cold_start.py [--data-dir DIR] [--image NAME] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

_KERAS = """
import sys, time
t0 = time.perf_counter()
import numpy as np
import keras
from leukoseg.classify.bundle import _cnn_members
from leukoseg.classify.cnn import build_thanh_cnn
from leukoseg.pipelines.predict import default_model_dir
# The bundled CNN may be an ensemble (the cross-fitted CNNs of train): every member predicts.
for p in _cnn_members(dict(np.load(f"{default_model_dir()}/cnn.npz", allow_pickle=False))):
    model = build_thanh_cnn(input_shape=tuple(int(v) for v in p["input_shape"]), seed=0)
    weights = [p[f"layer{i}_{w}"] for i in range(len(p["layers"])) for w in ("kernel", "bias") if f"layer{i}_{w}" in p]
    model.set_weights(weights)
    x = (np.zeros((12,) + tuple(int(v) for v in p["input_shape"]), np.float32) - p["mean"]) / p["std"]
    model.predict(x, verbose=0)
print(time.perf_counter() - t0)
"""


def _time(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--image", default="Im050_1.jpg", help="ALL-IDB1 image (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    image = args.data_dir / "im" / args.image
    if not image.is_file():
        raise SystemExit(f"{image}: not found")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    exe = Path(sys.executable).with_name("leukoseg")
    with tempfile.TemporaryDirectory() as tmp:
        classify = [_time([str(exe), "classify", str(image), "--out", f"{tmp}/out", "-q"], env)
                    for _ in range(args.runs)]  # fmt: skip
        help_s = [_time([str(exe), "--help"], env) for _ in range(args.runs)]
        keras_s = []
        for _ in range(max(1, args.runs // 2)):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _KERAS], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr[-2000:])
            keras_s.append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    print(f"image: {image.name}; {args.runs} runs each, fresh processes; load average {load:.2f} on {os.cpu_count()} CPUs")
    print(f"leukoseg --help:                                  median {statistics.median(help_s):.2f} s")
    print(f"leukoseg classify IMAGE (bundled model, end to end): median {statistics.median(classify):.2f} s "
          f"(min {min(classify):.2f}, max {max(classify):.2f}); target <= 2 s")
    print(f"Keras path (import keras + TensorFlow, rebuild the CNN, predict 12 patches): median "
          f"{statistics.median(keras_s):.2f} s, before any segmentation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
