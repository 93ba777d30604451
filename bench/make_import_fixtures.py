#!/usr/bin/env python3
"""Writes the small `torch.save` files `tests/import.rs` reads through candle's pickle reader:

- tests/fixtures/import/tiny_state_dict.pth: an OrderedDict state dict (f32, f64 and f16 tensors, an
  int64 `num_batches_tracked`), as `torch.save(model.state_dict(), path)` writes it;
- tests/fixtures/import/tiny_checkpoint.pth: a training checkpoint `{'epoch': 3, 'state_dict': …}`
  whose keys carry nn.DataParallel's `module.` prefix.

Values are aranges, so the test knows them without Python. Usage: python bench/make_import_fixtures.py
Needs: pip install torch.
"""
import collections
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests/fixtures/import")


def state_dict():
    """conv1.weight [2, 3, 1, 1] f32 = 0…5, bn1.running_mean [2] f64 = [0.5, 1.5],
    bn1.num_batches_tracked int64 = 7, fc.weight [2, 2] f16 = [-1, -0.5, 0, 0.5]."""
    return collections.OrderedDict([
        ("conv1.weight", torch.arange(6, dtype=torch.float32).reshape(2, 3, 1, 1)),
        ("bn1.running_mean", torch.tensor([0.5, 1.5], dtype=torch.float64)),
        ("bn1.num_batches_tracked", torch.tensor(7, dtype=torch.int64)),
        ("fc.weight", (torch.arange(4, dtype=torch.float16) * 0.5 - 1).reshape(2, 2)),
    ])


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.save(state_dict(), os.path.join(OUT, "tiny_state_dict.pth"))
    wrapped = collections.OrderedDict((f"module.{k}", v) for k, v in state_dict().items())
    torch.save({"epoch": 3, "state_dict": wrapped}, os.path.join(OUT, "tiny_checkpoint.pth"))
    for f in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, f))} bytes -> tests/fixtures/import/{f}")


if __name__ == "__main__":
    main()
