"""The native backend: whole forward passes of a LLaMA-shaped model in C on a team of threads.

``csrc/`` holds the C sources (``forward.c``, the passes, over ``kernels.c``, the thread team and the products),
``build.py`` compiles and loads them, ``abi.py`` describes their structs to ``ctypes``, ``support.py`` says which
models they compute and ``backend.py`` runs the passes (``NativeBackend``).
"""

from tencentpretrain.generation.native.abi import Unsupported
from tencentpretrain.generation.native.backend import NativeBackend
from tencentpretrain.generation.native.build import ISAS, choose_isa, load_library
from tencentpretrain.generation.native.support import check_shape, native_unavailable
from tencentpretrain.generation.native.team import Team

__all__ = ["ISAS", "NativeBackend", "Team", "Unsupported", "check_shape", "choose_isa", "load_library",
           "native_unavailable"]
