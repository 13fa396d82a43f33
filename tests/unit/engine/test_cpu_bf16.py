"""The bf16 CPU kernel: torch's bf16 linear up to summation order, and a model routed through it and back."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from smartspec.engine import cpu_bf16


def has_avx2() -> bool:
    try:
        return " avx2 " in f" {Path('/proc/cpuinfo').read_text()} ".replace("\n", " ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def ext() -> Any:
    if not has_avx2():
        pytest.skip("the kernel needs AVX2")
    return cpu_bf16._load()  # scripts/setup.sh built it; a test machine that cannot build it fails here


# m >= 64 takes the blocked path (a prefill): 70 and 131 leave a partial tile of rows, n = 257 a partial panel of
# weight rows, k = 520 a partial slice of columns.
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 9, 16, 33, 64, 70, 131])
@pytest.mark.parametrize("n,k", [(24, 8), (40, 72), (257, 136), (40, 520)])
def test_matches_torchs_bf16_linear_up_to_one_rounding(ext: Any, m: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    w = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    # The products are exact in fp32 either way; only the order of the fp32 sums differs.
    exact = x.double() @ w.double().T
    got = ext.linear_bf16_weight(x.float().contiguous(), w)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * k)
    ref = torch.nn.functional.linear(x, w).float()
    ulp = ref.abs().clamp_min(1e-3) * 2.0**-7  # one bf16 rounding step
    assert ((got.to(torch.bfloat16).float() - ref).abs() <= ulp + 1e-6).all()


def test_refuses_what_it_cannot_compute(ext: Any) -> None:
    x, w = torch.randn(2, 12), torch.randn(4, 12).to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="multiple of 8"):
        ext.linear_bf16_weight(x, w)
    with pytest.raises(RuntimeError, match="bfloat16"):
        ext.linear_bf16_weight(torch.randn(2, 16), torch.randn(4, 16))


def test_a_model_is_routed_through_the_kernel_and_back(ext: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_bf16, "cpu_lacks_bf16", lambda: True)  # as on an AVX2-only CPU, whatever this one is
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.GELU(), torch.nn.Linear(48, 20, bias=False),
                                torch.nn.Linear(20, 4)).to(torch.bfloat16)  # the last: 20 inputs, not a multiple of 8
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    with torch.no_grad():
        plain = model(x)
        assert cpu_bf16.use_cpu_bf16_kernel(model, "on") == 2
        routed = model(x)
        torch.testing.assert_close(routed.float(), plain.float(), rtol=0.05, atol=0.02)
    with torch.enable_grad():  # autograd needs torch's op: the kernel has no backward
        xg = x.clone().requires_grad_()
        first = model[0]
        assert isinstance(first, torch.nn.Linear)
        assert torch.equal(first(xg), torch.nn.functional.linear(xg, first.weight, first.bias))
    with torch.no_grad():
        twin = copy.deepcopy(model)  # e.g. bench/draft_quant.py: the copy runs on its own weights
        middle = twin[2]
        assert isinstance(middle, torch.nn.Linear)
        middle.weight.zero_()
        assert torch.equal(twin(x), twin[3](torch.zeros(3, 5, 20, dtype=torch.bfloat16)))
        torch.testing.assert_close(model(x).float(), routed.float(), rtol=0, atol=0)
        assert cpu_bf16.use_cpu_bf16_kernel(model, "off") == 0
        assert "forward" not in model[0].__dict__
        assert torch.equal(model(x), plain)


def test_auto_leaves_cpus_with_bf16_arithmetic_and_unknown_modes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_bf16, "cpu_lacks_bf16", lambda: False)
    model = torch.nn.Linear(16, 8).to(torch.bfloat16)
    assert cpu_bf16.use_cpu_bf16_kernel(model, "auto") == 0 and cpu_bf16.use_cpu_bf16_kernel(model, "on") == 0
    with pytest.raises(ValueError, match="auto, on, off"):
        cpu_bf16.kernel("sometimes")  # type: ignore[arg-type]
