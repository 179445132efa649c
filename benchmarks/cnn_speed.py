"""Training speed of the experiment's CNN, and of the Keras compile options a user might try for it.

The CNN part is most of the experiment's time on a CPU (``timings_s.fit_cnn`` in ``metrics.json``), and
the network is small enough for the step's overhead to matter. This script times, each in a fresh Python
process on the active Keras backend and the chosen device, on random 50x50 patches (the speed does not
depend on their content):

- ``experiment``: :class:`~leukoseg.classify.CNNClassifier` with the experiment's settings
  (:data:`~leukoseg.pipelines.experiment.CNN_DEFAULTS`): flips, colour jitter and shifts drawn in Python for
  every batch, weight averaging; what a run's ``patches/s`` reports;
- ``keras``: the same network, optimiser and batches fitted by ``model.fit`` on arrays, without the
  augmentation, so its difference to ``experiment`` is what the batches cost;
- ``xla``: as ``keras``, compiled with ``jit_compile=True`` (XLA for TensorFlow and JAX, ``torch.compile``
  for PyTorch; Keras's default, ``"auto"``, leaves it off on a CPU);
- ``bf16``: as ``keras``, with the ``mixed_bfloat16`` dtype policy (bfloat16 computations, float32 weights).

Every timed fit builds, compiles and trains a fresh network, as each cross-fitted CNN of the experiment
does (so XLA's compilation counts, once a network, as it would there), after an untimed fit that pays the
backend's one-off start-up. Modes alternate in rounds, so a shared machine's changes of load fall on all of
them alike; the figure of a mode is its median over the rounds, and its ratio to ``keras`` the median of the
rounds' ratios.

    python benchmarks/cnn_speed.py [--device auto|cpu|gpu] [--patches N] [--epochs E] [--rounds R] [--modes ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

MODES = ("experiment", "keras", "xla", "bf16")

# Run in a fresh process: a dtype policy is global to Keras, and each mode must start alike.
_CHILD = """
import json, sys, time
import numpy as np
mode, device, n, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import keras
from leukoseg.classify import CNNClassifier
from leukoseg.classify.cnn import _ema_momentum, _loss, _optimizer, build_thanh_cnn, device_scope, resolve_device
from leukoseg.pipelines.experiment import CNN_DEFAULTS
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (n, 50, 50, 3), dtype=np.uint8)
y = np.arange(n) % 2
s = dict(CNN_DEFAULTS)
dev = resolve_device(device)
if mode == "bf16":
    keras.config.set_dtype_policy("mixed_bfloat16")
Xf = (X.astype(np.float32) - 128.0) / 64.0


def fit(e):  # a fresh network each time, as each CNN of the experiment: building and tracing count
    if mode == "experiment":
        return CNNClassifier(**{**s, "epochs": e, "device": dev, "random_state": 0}).fit(X, y)
    with device_scope(dev):
        model = build_thanh_cnn(seed=0)
        steps = e * -(-n // s["batch_size"])
        # the momentum CNNClassifier uses: lowered for a short training, as the "experiment" mode's is
        momentum = _ema_momentum(s["ema_momentum"], CNNClassifier().ema_max_start_share, steps)
        model.compile(optimizer=_optimizer(s["learning_rate"], "constant", momentum, steps),
                      loss=_loss(0.0), jit_compile=mode == "xla")
        model.fit(Xf, y, batch_size=s["batch_size"], epochs=e, verbose=0, shuffle=True)


fit(1)  # the backend's one-off start-up, outside the timing
t = time.perf_counter(); fit(epochs); dt = time.perf_counter() - t
print(json.dumps({"backend": keras.backend.backend(), "device": dev, "patches_per_s": n * epochs / dt}))
"""


def measure(mode: str, device: str, patches: int, epochs: int) -> dict:
    """Training patches per second of one mode, in a fresh process; ``{"error": line}`` when it fails."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, device, str(patches), str(epochs)],
                         env=env, capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(results: dict[str, list[dict]]) -> list[str]:
    """One line per mode: median patches/s over the rounds and the median of its per-round ratio to keras."""
    lines = [f"{'mode':10} {'patches/s':>9} {'x keras':>7}  rounds"]
    ref = results.get("keras")
    for mode, rounds in results.items():
        ok = [r["patches_per_s"] for r in rounds if "patches_per_s" in r]
        if len(ok) < len(rounds):
            lines.append(f"{mode:10} failed: {next(r['error'] for r in rounds if 'error' in r)}")
            continue
        ratios = ([a / b["patches_per_s"] for a, b in zip(ok, ref) if "patches_per_s" in b]
                  if ref is not None else [])  # fmt: skip
        ratio = f"{np.median(ratios):7.2f}" if len(ratios) == len(ok) else f"{'-':>7}"
        lines.append(f"{mode:10} {np.median(ok):9.0f} {ratio}  " + ", ".join(f"{v:.0f}" for v in ok))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--patches", type=int, default=448,
                        help="training patches (default: 448, about one cross-fitted CNN's of the experiment)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the timed fit (after an untimed one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    if args.patches < 1 or args.epochs < 1 or args.rounds < 1:
        parser.error("--patches, --epochs and --rounds must be at least 1")
    results: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    backend = device = None
    for _ in range(args.rounds):
        for mode in args.modes:
            r = measure(mode, args.device, args.patches, args.epochs)
            results[mode].append(r)
            backend, device = r.get("backend", backend), r.get("device", device)
    print(f"CNN training speed: {args.patches} patches, {args.epochs} epochs timed, {args.rounds} round(s); "
          f"Keras backend {backend}, device {device}")
    print("\n".join(summary(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
