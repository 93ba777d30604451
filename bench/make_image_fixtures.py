"""Writes the small JPEG fixtures of octconv-runtime/tests/image_pipeline.rs (needs Pillow):
a flat-colour 24×16 image as greyscale and as CMYK JPEG, and prints what Pillow decodes them to
(the independent reference the test compares our decoder with).

    python bench/make_image_fixtures.py
"""
from pathlib import Path
from PIL import Image

out = Path(__file__).resolve().parent.parent / "octconv-runtime/tests/fixtures/images"
out.mkdir(parents=True, exist_ok=True)
rgb = Image.new("RGB", (24, 16), (200, 100, 50))
rgb.convert("L").save(out / "grey.jpg", quality=95)
rgb.convert("CMYK").save(out / "cmyk.jpg", quality=95)
for name in ["grey.jpg", "cmyk.jpg"]:
    img = Image.open(out / name)
    print(name, img.mode, img.size, "Pillow RGB of pixel (5, 5):", img.convert("RGB").getpixel((5, 5)))
