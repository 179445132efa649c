"""Speed and memory of `leukoseg segment` on 2592x1944 ALL-IDB1 smears.

Measured in one run, so the ratio is fair whatever the machine: the JPEG decode time of each image
(OpenCV's libjpeg-turbo, the fastest decoder here) and the wall time of the whole command with one worker,
outputs included (``leukoseg segment FILES --workers 1``, a batch, per image), then the peak memory of one
smear and of a 100-megapixel image.

    python benchmarks/segmentation_speed.py [--data-dir DIR] [--images N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import data_dir_argument  # noqa: E402

LEUKOSEG = [sys.executable, "-m", "leukoseg"]


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd` in a fresh child; its peak resident memory in MB and its wall time."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); t = time.perf_counter() - t\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, t, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    rss, seconds, rc = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{cmd} exited {rc}")
    return float(rss), float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir_argument(parser)
    parser.add_argument("--images", type=int, default=12, help="how many 2592x1944 images to time")
    args = parser.parse_args()

    import cv2

    files = sorted(p for p in (args.data_dir / "im").glob("Im*.jpg") if int(p.stem[2:5]) >= 34)
    files = [p for p in files if cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_8).shape[:2] == (243, 324)]
    files = files[:: max(1, len(files) // args.images)][: args.images]

    decode = []
    for p in files:
        cv2.imread(str(p))  # warm the file cache: both measurements then read from memory
        t = time.perf_counter()
        cv2.imread(str(p))
        decode.append(time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        # The whole command in a batch: Python start-up and imports are paid once, as in real use.
        t = time.perf_counter()
        subprocess.run([*LEUKOSEG, "segment", *map(str, files), "--workers", "1", "--out", tmp, "-q"], check=True)
        batch = (time.perf_counter() - t) / len(files)
        # The same images one at a time, in-process, split into stages.
        from leukoseg.io import read_image
        from leukoseg.segmentation import segment, write_segmentation

        stages = {"read": [], "segment": [], "write": []}
        for p in files:
            t0 = time.perf_counter()
            image = read_image(p)
            t1 = time.perf_counter()
            seg = segment(image)
            t2 = time.perf_counter()
            write_segmentation(Path(tmp) / "x", image, seg)
            t3 = time.perf_counter()
            for key, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
                stages[key].append(seconds)
        one_rss, one_s = peak_rss_mb([*LEUKOSEG, "segment", str(files[0]), "--workers", "1", "--out", tmp, "-q"])

        # A 100-megapixel smear: one image tiled 4 x 4 and resized to 11547 x 8660.
        big_path = Path(tempfile.mkdtemp()) / "big.jpg"  # not inside --out: outputs are never inputs
        image = cv2.imread(str(files[0]))
        big = cv2.resize(np.tile(image, (4, 4, 1)), (11547, 8660), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(big_path), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
        del big, image
        out_big = Path(tmp) / "big-out"
        big_rss, big_s = peak_rss_mb([*LEUKOSEG, "segment", str(big_path), "--workers", "1", "--out", str(out_big), "-q",
                                      "--no-crops"])

        big_path.unlink()
    d = float(np.median(decode))
    print(f"images: {len(files)} x 2592x1944 (ALL-IDB1, one camera)")
    print(f"JPEG decode (cv2.imread), median per image: {d * 1000:.1f} ms")
    print(f"whole command, 1 worker, outputs included, per image (batch): {batch * 1000:.1f} ms "
          f"= {batch / d:.2f} x decode")
    for k, v in stages.items():
        print(f"  in-process {k:8s} median {np.median(v) * 1000:6.1f} ms")
    print(f"peak RSS, one 2592x1944 smear (whole command): {one_rss:.0f} MB ({one_s:.2f} s with start-up)")
    print(f"peak RSS, one 100-megapixel smear (11547x8660, --no-crops): {big_rss:.0f} MB ({big_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
