"""Regenerate ``data/digits/`` from the scikit-learn handwritten digits.

The 1,797 8x8 grey images (values 0-16) are scaled to 0-255 and written as
PNG files in ``train/<class>/`` and ``test/<class>/`` with a fixed stratified
80/20 split, so the folder is identical on every run.

Usage: ``python data/make_digits.py [--out data/digits]``
"""

import argparse
import os
import shutil

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 1234
TEST_FRACTION = 0.2


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "digits"))
    args = parser.parse_args()
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        index, test_size=TEST_FRACTION, stratify=digits.target, random_state=SEED)
    shutil.rmtree(args.out, ignore_errors=True)
    for split, chosen in (("train", train_idx), ("test", test_idx)):
        for i in sorted(chosen):
            folder = os.path.join(args.out, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[i]).save(
                os.path.join(folder, f"{i:04d}.png"), optimize=True)
    print(f"wrote {len(train_idx)} train and {len(test_idx)} test images to {args.out}")


if __name__ == "__main__":
    main()
