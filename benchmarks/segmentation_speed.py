"""Speed and memory of `leukoseg segment` on 2592x1944 ALL-IDB1 smears.

Measured in one run, so the ratio is fair whatever the machine: the JPEG decode time of each image
(OpenCV's libjpeg-turbo, the fastest decoder here) and the wall time of the whole command with one worker,
outputs included (``leukoseg segment FILES --workers 1``, a batch as a user runs it on a folder, per
image), then the peak memory of one smear and of a 100-megapixel image.

On a shared machine the load changes from second to second, so the two are measured in rounds: each round
times the command on the batch and compares it with the decode time of the same images measured just
before and just after it; the ratio is the median of the rounds' ratios.

    python benchmarks/segmentation_speed.py [--data-dir DIR] [--images N] [--batch M] [--rounds R]
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
    parser.add_argument("--images", type=int, default=12, help="how many 2592x1944 images to time in-process")
    parser.add_argument("--batch", type=int, default=0,
                        help="how many 2592x1944 images the whole command segments in one batch (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of decode + whole command")
    args = parser.parse_args()

    import cv2

    found = sorted(p for p in (args.data_dir / "im").glob("Im*.jpg") if int(p.stem[2:5]) >= 34)
    found = [p for p in found if cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_8).shape[:2] == (243, 324)]
    files = found[:: max(1, len(found) // args.images)][: args.images]
    batch_files = found[:: max(1, len(found) // args.batch)][: args.batch] if args.batch > 0 else found

    def decode_median(paths: list[Path]) -> float:
        times = []
        for p in paths:
            cv2.imread(str(p))  # warm the file cache: both measurements then read from memory
            t = time.perf_counter()
            cv2.imread(str(p))
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    with tempfile.TemporaryDirectory() as tmp:
        rounds = []
        before = decode_median(batch_files)
        for r in range(args.rounds):
            # The whole command on the batch: Python start-up and imports are paid once, as in real use.
            out = Path(tmp) / f"round{r}"
            t = time.perf_counter()
            subprocess.run([*LEUKOSEG, "segment", *map(str, batch_files), "--workers", "1", "--out", str(out), "-q"],
                           check=True)
            per_image = (time.perf_counter() - t) / len(batch_files)
            after = decode_median(batch_files)
            # The decode time around the command: the mean of the medians just before and just after it.
            rounds.append(((before + after) / 2, per_image))
            before = after
        decode = [d for d, _ in rounds]
        batch = [b for _, b in rounds]
        ratios = [b / d for d, b in rounds]
        # The same images one at a time, in-process, split into stages.
        from leukoseg.io import read_image
        from leukoseg.segmentation import segment, write_segmentation

        stages: dict[str, list[float]] = {"read": [], "segment": [], "write": []}
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
    print(f"images: {len(batch_files)} x 2592x1944 in the batch, {len(files)} in-process (ALL-IDB1, one camera)")
    for r, (d, b) in enumerate(rounds):
        print(f"  round {r + 1}: decode median (before/after) {d * 1000:.1f} ms, whole command {b * 1000:.1f} "
              f"ms/image = {b / d:.2f} x")
    print(f"JPEG decode (cv2.imread), median per image: {np.median(decode) * 1000:.1f} ms")
    print(f"whole command, 1 worker, outputs included, per image (batch of {len(batch_files)}): "
          f"{np.median(batch) * 1000:.1f} ms = {np.median(ratios):.2f} x decode (median of {len(rounds)} rounds)")
    for k, v in stages.items():
        print(f"  in-process {k:8s} median {np.median(v) * 1000:6.1f} ms")
    print(f"peak RSS, one 2592x1944 smear (whole command): {one_rss:.0f} MB ({one_s:.2f} s with start-up)")
    print(f"peak RSS, one 100-megapixel smear (11547x8660, --no-crops): {big_rss:.0f} MB ({big_s:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
