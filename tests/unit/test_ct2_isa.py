"""CTranslate2's AVX-512 kernels are forced only where they were measured and can run (voicecli/__init__.py): an
AMD CPU with all five subsets they check. Forced on a CPU that lacks one, CTranslate2 refuses to load whisper."""

from __future__ import annotations

import pytest

from voicecli import _amd_with_avx512

ALL = "fpu avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"


def cpuinfo(vendor: str, flags: str) -> str:
    return f"processor\t: 0\nvendor_id\t: {vendor}\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"


@pytest.mark.parametrize(
    ("vendor", "flags", "forced"),
    [
        ("AuthenticAMD", ALL, True),  # AMD EPYC (Zen 4): measured faster
        ("AuthenticAMD", ALL.replace(" avx512bw", ""), False),  # a subset missing: CTranslate2 would refuse
        ("AuthenticAMD", "fpu avx2 fma", False),  # no AVX-512 at all (Zen 3 and older)
        ("GenuineIntel", ALL, False),  # Intel: not measured, CTranslate2's own choice stays
    ],
)
def test_avx512_is_forced_only_on_amd_with_every_subset(vendor: str, flags: str, forced: bool) -> None:
    assert _amd_with_avx512(cpuinfo(vendor, flags)) is forced


def test_no_cpuinfo_flags_means_no_forcing() -> None:
    assert _amd_with_avx512("processor\t: 0\nvendor_id\t: AuthenticAMD\n") is False
