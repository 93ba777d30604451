"""What the benchmark scripts print about the machine they ran on (shared by compare_pytorch.py and
onnxruntime_check.py)."""
import os


def cpu_model():
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def simd():
    """The widest vector extension the kernels can use: AVX-512, AVX2 + FMA, or neither."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return "AVX-512" if " avx512f" in flags else ("AVX2 + FMA" if " avx2" in flags else "no AVX2")
