"""Opening GGUF files in llama.cpp (through llama-cpp-python) the same safe way everywhere we do it.

llama.cpp moves the weights of some tensor types into "extra buffer types" when it loads a file: repacked layouts for
its AVX2/AVX-512 quantised matrix products, and on CPUs with AMX, tiles for its AMX kernels. On AMX machines
(4th-generation Xeon and later) that AMX path crashes the process (SIGSEGV in ``ggml_backend_amx_mul_mat``) at the
first evaluation of any q8_0 or q4_0 file; f32 files are not repacked and run. Loading with the extra buffer types off
(``llama_model_params.use_extra_bufts = False``, llama.cpp's ``--no-repack``) avoids the crash.

``repack="auto"`` (every command's default) turns repacking off where the CPU has AMX and leaves llama.cpp's
default (on) elsewhere, and says so once on stderr; ``"on"`` and ``"off"`` force it. ``run_llama_cpp.py``, the
benchmarks, the quickstart's check and the tests open files through :func:`open_llama`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import threading

from tencentpretrain.hardware import CPU, cpu

REPACK_CHOICES = ("auto", "on", "off")
_PARAMS_LOCK = threading.Lock()  # the default-parameters hook below is process-wide while a model loads


def add_repack_arg(parser: argparse._ActionsContainer) -> None:
    """``--llama_cpp_repack auto|on|off``, as every command that runs llama.cpp spells it."""
    parser.add_argument("--llama_cpp_repack", choices=REPACK_CHOICES, default="auto",
                        help="llama.cpp's weight repacking (extra buffer types): auto turns it off on CPUs with AMX, "
                             "where llama.cpp's AMX path crashes on q8_0/q4_0 files, and leaves it on elsewhere "
                             "(docs/deployment.md)")


def repack_decision(choice: str = "auto", machine: CPU | None = None) -> tuple[bool, str | None]:
    """Whether llama.cpp should repack weights, and the note to print about it (None: nothing to say).

    Args:
        choice: "auto", "on" or "off".
        machine: the CPU to decide for (default: this one).
    """
    if choice not in REPACK_CHOICES:
        raise ValueError(f"llama.cpp repack setting {choice!r}: expected one of {', '.join(REPACK_CHOICES)}")
    machine = machine or cpu()
    if choice == "auto" and machine.amx:
        return False, ("llama.cpp: weight repacking is off on this AMX CPU (its AMX path crashes on q8_0/q4_0 "
                       "files); --llama_cpp_repack on forces it")
    if choice == "on" and machine.amx:
        return True, "llama.cpp: weight repacking forced on with AMX: q8_0/q4_0 files may crash the process"
    return choice != "off", None


@functools.cache
def say_once(note: str) -> None:
    """Print ``note`` on stderr the first time it is given in this process."""
    print(note, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _extra_buffer_types(enabled: bool):
    """While a model loads, make llama-cpp-python's default model parameters carry ``use_extra_bufts=enabled``
    (``Llama`` takes no keyword for it and fills its parameters from ``llama_model_default_params``)."""
    import llama_cpp.llama_cpp as low

    if "use_extra_bufts" not in dict(low.llama_model_params._fields_):
        if enabled:
            yield
            return
        raise RuntimeError("this llama-cpp-python has no use_extra_bufts parameter: it cannot load with repacking "
                           "off (install llama-cpp-python 0.3.16 or later)")
    default = low.llama_model_default_params

    def params():
        values = default()
        values.use_extra_bufts = enabled
        return values

    with _PARAMS_LOCK:
        low.llama_model_default_params = params
        try:
            yield
        finally:
            low.llama_model_default_params = default


def open_llama(path, repack: str = "auto", **options):
    """``llama_cpp.Llama(model_path=path, **options)`` with weight repacking as ``repack`` decides.

    Args:
        path: the GGUF file.
        repack: "auto" (off on AMX CPUs, see the module docstring), "on" or "off".
        **options: ``llama_cpp.Llama``'s keywords (n_ctx, n_threads, type_k, logits_all, verbose...).
    """
    import llama_cpp

    enabled, note = repack_decision(repack)
    if note:
        say_once(note)
    with _extra_buffer_types(enabled):
        return llama_cpp.Llama(model_path=str(path), **options)
