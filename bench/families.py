"""The builtin families issue #23 benchmarks, with their batch sizes (shared by
onnxruntime_check.py and alpha_pays.py)."""

# key: (builtin call, title, batch): the seven families of issue #23 at their batch sizes, and the
# small U-Net the export was first checked on.
MODELS = {
    "resnext": ("resnext(depth = 50, groups = 32, width = 4)", "ResNeXt-50 (32×4d)", 8),
    "se_resnet": ("se_resnet(depth = 50, reduction = 16)", "SE-ResNet-50", 8),
    "mobilenet_v2": ("mobilenet_v2(width = 1.0)", "MobileNet v2 (1.0)", 8),
    "densenet": ("densenet(depth = 121, growth = 32)", "DenseNet-121", 8),
    "unet128": ("unet(base = 32, depth = 4, size = 128)", "U-Net, base 32, depth 4, 128×128", 4),
    "wrn16": ("wrn(n = 2, k = 4)", "WRN-16-4", 32),
    "seed": ("seed_wrn(n = 2, k = 2)", "the seed's WRN, n = 2, k = 2 (mixing head)", 32),
    "unet": ("unet(base = 16, depth = 3, size = 64, classes = 2)", "U-Net, base 16, depth 3, 64×64", 32),
}
FAMILIES = "resnext,se_resnet,mobilenet_v2,densenet,unet128,wrn16,seed"
