"""The environment report to paste into a bug: ``python -m tencentpretrain.env`` (``--json`` for a machine-readable
one), as ``transformers env``, DeepSpeed's ``ds_report`` and ``python -m torch.utils.collect_env`` do.

It names Python and the platform; the versions of the libraries we drive (torch with its BLAS, oneDNN and CPU
capability, transformers, deepspeed, sentencepiece, tokenizers, llama-cpp-python, gguf, lm-eval); the CPU's model and
the features that decide something here (AVX2, AVX-512, AVX512-BF16, AMX); whether our native decoding kernel
(``generation/native/csrc/``) builds, loads and runs, and which build; llama.cpp's repack decision; the GPUs.
Nothing here imports llama.cpp itself (its native code can crash on some CPUs): its version comes from the
installed package's metadata.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from importlib import metadata

from tencentpretrain.hardware import cpu
from tencentpretrain.llamacpp import repack_decision

DISTRIBUTIONS = ("torch", "transformers", "deepspeed", "sentencepiece", "tokenizers", "llama-cpp-python", "gguf",
                 "lm-eval", "peft", "numpy", "safetensors")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def torch_report() -> dict:
    """torch's build: BLAS, oneDNN, the CPU capability its kernels use, threads, CUDA."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    return {"version": torch.__version__, "blas": blas.group(1) if blas else None,
            "onednn": onednn.group(1) if onednn and torch.backends.mkldnn.is_available() else None,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "cuda": torch.version.cuda}


def native_report() -> dict:
    """Whether our native decoding kernel builds, loads and runs here (and which build of it)."""
    from tencentpretrain.generation.native import Unsupported, load_library

    try:
        lib = load_library()
        return {"works": True, "build": lib.isa, "vector_bits": lib.vector_bits()}
    except Unsupported as why:
        return {"works": False, "why": str(why)}


def gpu_report() -> list[dict]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [{"name": torch.cuda.get_device_name(i),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
             "bf16": torch.cuda.is_bf16_supported()} for i in range(torch.cuda.device_count())]


def report() -> dict:
    """Everything the module docstring lists, as plain data."""
    machine = cpu()
    repack, _ = repack_decision("auto", machine)
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "versions": {name: _version(name) for name in DISTRIBUTIONS},
        "torch": torch_report(),
        "cpu": {"model": machine.model, "logical_cpus": machine.logical_cpus, "features": machine.features(),
                "kind": machine.kind(), "bf16_in_hardware": machine.bf16, "amx": machine.amx},
        "native_kernel": native_report(),
        "llama_cpp_repack_auto": "on" if repack else "off (AMX)",
        "gpus": gpu_report(),
    }


def text(data: dict) -> str:
    """The report as the lines a bug report quotes."""
    t, native = data["torch"], data["native_kernel"]
    lines = [f"Python: {data['python']} ({data['platform']})"]
    lines += [f"{name}: {version or 'not installed'}" for name, version in data["versions"].items()]
    lines.append(f"torch build: BLAS {t['blas']}, oneDNN {t['onednn'] or 'none'}, CPU capability "
                 f"{t['cpu_capability']}, {t['threads']} threads, CUDA {t['cuda'] or 'none'}")
    lines.append(f"CPU: {data['cpu']['kind']}")
    lines.append(f"CPU features: {' '.join(data['cpu']['features']) or 'none known'}")
    lines.append("native decoding kernel: " + (f"builds and runs ({native['build']} build, {native['vector_bits']}-bit "
                                               "vectors)" if native["works"] else f"unavailable: {native['why']}"))
    lines.append(f"llama.cpp weight repacking (--llama_cpp_repack auto): {data['llama_cpp_repack_auto']}")
    gpus = data["gpus"]
    lines.append("GPUs: " + ("; ".join(f"{g['name']} ({g['memory_gib']} GiB, bf16 {g['bf16']})" for g in gpus)
                             if gpus else "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tencentpretrain.env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    data = report()
    print(json.dumps(data, indent=2) if args.json else text(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
