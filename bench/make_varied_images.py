"""Writes an ImageNet-layout folder of varied images for `octconv data-bench` (needs Pillow and
NumPy): train/<class>/ and val/<class>/ with 4 classes, 60 + 10 images each, sizes 200–520 px,
smooth random content; every tenth image greyscale JPEG, every tenth CMYK JPEG, every tenth PNG,
the rest RGB JPEG quality 85 with the `.JPEG` extension as in ImageNet.

    python bench/make_varied_images.py /tmp/inet
    octconv data-bench folder:/tmp/inet --images 240 --threads 2 [--decoder image] [--eval]

With a size (`python bench/make_varied_images.py /tmp/inet500 500x375`) every image is that size
(ImageNet's median 500 × 375), all RGB JPEGs at quality 85.
"""
import os
import sys

import numpy as np
from PIL import Image

root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/inet"
fixed = tuple(int(v) for v in sys.argv[2].split("x")) if len(sys.argv) > 2 else None
rng = np.random.default_rng(0)
for split, n in [("train", 60), ("val", 10)]:
    for c in ["cat", "dog", "fish", "owl"]:
        d = os.path.join(root, split, c)
        os.makedirs(d, exist_ok=True)
        for i in range(n):
            w, h = fixed if fixed else rng.integers(200, 520, 2)
            base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)
            k = 9 if fixed else i % 10
            if k == 0:
                img.convert("L").save(f"{d}/{i:04d}.jpg", quality=85)
            elif k == 1:
                img.convert("CMYK").save(f"{d}/{i:04d}.jpg", quality=85)
            elif k == 2:
                img.save(f"{d}/{i:04d}.png")
            else:
                img.save(f"{d}/{i:04d}.JPEG", quality=85)
print("wrote", root)
