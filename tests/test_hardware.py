"""``hardware.parse_cpuinfo`` on the machine kinds we run on, and the llama.cpp repack decision made from it."""

from __future__ import annotations

import pytest

from tencentpretrain.hardware import cpu, parse_cpuinfo
from tencentpretrain.llamacpp import repack_decision

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c"


def cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    block = "processor\t: {}\nvendor_id\t: x\nmodel name\t: {}\nflags\t\t: {}\n\n"
    return "".join(block.format(i, model, flags) for i in range(processors))


EPYC = parse_cpuinfo(cpuinfo("AMD EPYC 7B13 64-Core Processor", f"{BASE} avx2 fma"))
XEON = parse_cpuinfo(cpuinfo("Intel(R) Xeon(R) Processor", f"{BASE} avx2 fma avx512f avx512_vnni avx512_bf16"))
XEON_AMX = parse_cpuinfo(cpuinfo("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                                 f"{BASE} avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", processors=4))


def test_machine_kinds():
    assert EPYC.kind() == "AMD EPYC 7B13 64-Core Processor (2 logical CPUs; AVX2 only)"
    assert not EPYC.bf16 and not EPYC.amx and EPYC.features() == ["AVX2", "FMA"]
    assert XEON.kind().endswith("(2 logical CPUs; AVX-512 with AVX512-BF16, no AMX)") and XEON.bf16
    assert XEON_AMX.amx and XEON_AMX.bf16 and XEON_AMX.logical_cpus == 4
    assert XEON_AMX.features() == ["AVX2", "FMA", "AVX-512", "AVX512-BF16", "AMX", "AMX-BF16", "AMX-INT8"]
    assert parse_cpuinfo("").flags == frozenset()


def test_this_machine_is_read():
    machine = cpu()
    assert machine.model and machine.logical_cpus >= 1 and machine.kind().startswith(machine.model)


def test_repack_off_on_amx_only_by_default():
    enabled, note = repack_decision("auto", XEON_AMX)
    assert not enabled and "off on this AMX CPU" in note and "--llama_cpp_repack on" in note
    assert repack_decision("auto", XEON) == (True, None)
    assert repack_decision("auto", EPYC) == (True, None)


def test_repack_forced_either_way():
    assert repack_decision("off", EPYC) == (False, None)
    enabled, note = repack_decision("on", XEON_AMX)
    assert enabled and "may crash" in note
    with pytest.raises(ValueError, match="expected one of auto, on, off"):
        repack_decision("yes", EPYC)


def test_the_note_is_said_once(capsys):
    from tencentpretrain.llamacpp import say_once

    note = "llama.cpp: a note of tests/test_hardware.py"
    say_once(note)
    say_once(note)
    assert capsys.readouterr().err == note + "\n"
