"""Records torchvision's RandomResizedCrop boxes with the random draws that made them, for
octconv-runtime/tests/image_pipeline.rs (`random_resized_crop_replays_torchvisions_boxes`), which
replays the draws through our `random_resized_crop` and must get the same boxes.

The draws are taken by repeating `RandomResizedCrop.get_params`' calls to torch's generator in its
order under the same seed; each case asserts that the repeat gives torchvision's own box, so the
recorded draws are the real ones.

    python bench/torchvision_crop_draws.py   # writes octconv-runtime/tests/fixtures/torchvision_crops.json
"""
import json
import math
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import RandomResizedCrop

SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)


def replay(width, height):
    """get_params' steps, recording each draw as it is used (after .item())."""
    draws = []
    area = height * width
    log_ratio = torch.log(torch.tensor(RATIO))
    for _ in range(10):
        a = torch.empty(1).uniform_(SCALE[0], SCALE[1]).item()
        draws.append(a)
        target_area = area * a
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        draws.append(aspect_ratio)
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            draws += [i, j]
            return draws, [i, j, h, w]
    return draws, None


cases = []
sizes = [(500, 375), (375, 500), (224, 224), (32, 32), (640, 480), (1000, 10), (10, 1000), (97, 61)]
for width, height in sizes:
    for seed in range(6):
        img = torch.zeros(3, height, width)
        torch.manual_seed(seed)
        i, j, h, w = RandomResizedCrop.get_params(img, SCALE, RATIO)
        torch.manual_seed(seed)
        draws, box = replay(width, height)
        if box is not None:
            assert box == [i, j, h, w], (width, height, seed, box, (i, j, h, w))
        cases.append({"width": width, "height": height, "seed": seed, "draws": draws,
                      "box": {"top": i, "left": j, "height": h, "width": w}})
out = Path(__file__).resolve().parent.parent / "octconv-runtime/tests/fixtures/torchvision_crops.json"
out.write_text(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                           "scale": SCALE, "ratio": RATIO, "cases": cases}, indent=1))
print("wrote", out, len(cases), "cases")
