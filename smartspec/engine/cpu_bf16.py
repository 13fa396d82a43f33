"""bf16 Linear layers on CPUs without bf16 arithmetic (AVX2): each weight row is read once for all rows of a step.

On an AVX2-only CPU torch computes a bf16 linear one input row at a time, so a verify of w tokens costs about w
one-token forwards and no k > 0 can pay (real target, 2026-12-07: 287 / 450 / 797 / 1120 ms for 1 / 2 / 4 / 6
tokens). This kernel widens each bf16 weight row to fp32 in registers (exact: bf16 is the top half of an fp32),
multiplies every row of x against it while it is in cache, accumulates in fp32 and rounds once to bf16, as torch's
own bf16 matmul does; results differ from torch's only in summation order (at most one bf16 rounding step).
From 64 rows on (a prefill, a wide verify batch) that loop is bound by re-reading x for every weight row, so wide
inputs go through a register-blocked GEMM instead: panels of 16 weight rows × 256 columns widened once into an fp32
buffer, 6 × 16 output tiles held in registers (real target, 170 / 300-token forward: 9.0-10.1 / 17.3-19.1 s before,
6.9 / 10.7-11.4 s after, `python -m bench.verify_width --widths ...`; equal at 64, so that is where it switches).

It is compiled with torch's C++ extension tooling (g++, ninja, OpenMP): `python -m smartspec.engine.cpu_bf16 build`
(scripts/setup.sh runs it). `auto` uses it only where it is already built, so no service compiles at start-up;
`on` builds it if needed and fails if it cannot; `off` keeps torch's path.
"""

from __future__ import annotations

import copy
import logging
import sys
from functools import cache
from pathlib import Path
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Mode = Literal["auto", "on", "off"]
MODES = ("auto", "on", "off")
_NAME = "smartspec_cpu_bf16_v2"  # a new name for a changed source: builds are cached by name

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

inline __m256 load_bf16x8(const at::BFloat16* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// MB rows of x against one weight row, MB x KU independent accumulators to keep the FMA units busy.
template <int MB, int KU>
inline void rows_dot(const float* x, int64_t K, const at::BFloat16* w, float* out, int64_t ldo) {
  __m256 acc[MB][KU];
  for (int m = 0; m < MB; ++m)
    for (int u = 0; u < KU; ++u) acc[m][u] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 * KU <= K; k += 8 * KU)
    for (int u = 0; u < KU; ++u) {
      const __m256 wv = load_bf16x8(w + k + 8 * u);
      for (int m = 0; m < MB; ++m)
        acc[m][u] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k + 8 * u), wv, acc[m][u]);
    }
  for (; k < K; k += 8) {
    const __m256 wv = load_bf16x8(w + k);
    for (int m = 0; m < MB; ++m) acc[m][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), wv, acc[m][0]);
  }
  for (int m = 0; m < MB; ++m) {
    __m256 s = acc[m][0];
    for (int u = 1; u < KU; ++u) s = _mm256_add_ps(s, acc[m][u]);
    out[m * ldo] = hsum(s);
  }
}

// Wide inputs (a prefill): the dot-product loop above re-reads every x row once per weight row, so it is bound by
// cache bandwidth. Here a panel of NR weight rows × KC columns is widened once into an fp32 buffer laid out k-major,
// and an MR × NR tile of the output is accumulated in registers: per k, two weight vectors, MR broadcasts of x and
// 2·MR FMAs (a register-blocked GEMM).
constexpr int NR = 16;
constexpr int MR = 6;
constexpr int64_t KC = 256;
constexpr int64_t WIDE_ROWS = 64;  // from here on the GEMM is faster (see the module docstring)

inline float widen(at::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// wp[k * NR + j] = w[n0 + j, k0 + k] for the nc (<= NR) rows of the panel; the rest are 0.
inline void pack_panel(const at::BFloat16* w, int64_t K, int64_t n0, int nc, int64_t k0, int64_t kc, float* wp) {
  for (int j = 0; j < NR; ++j) {
    if (j < nc) {
      const at::BFloat16* row = w + (n0 + j) * K + k0;
      for (int64_t k = 0; k < kc; ++k) wp[k * NR + j] = widen(row[k]);
    } else {
      for (int64_t k = 0; k < kc; ++k) wp[k * NR + j] = 0.0f;
    }
  }
}

// out[rows, nc] (+)= x[MR, kc] @ panel, x with leading dimension ldx. Twelve named accumulators (an array of them
// is spilled to the stack on every iteration by GCC), so the loop is two loads, six broadcasts and twelve FMAs.
inline void tile(const float* x, int64_t ldx, const float* wp, int64_t kc, float* out, int64_t N, int rows, int nc,
                 bool first) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx, *x5 = x + 5 * ldx;
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_load_ps(wp + k * NR);
    const __m256 w1 = _mm256_load_ps(wp + k * NR + 8);
    __m256 b = _mm256_broadcast_ss(x0 + k);
    c00 = _mm256_fmadd_ps(b, w0, c00);
    c01 = _mm256_fmadd_ps(b, w1, c01);
    b = _mm256_broadcast_ss(x1 + k);
    c10 = _mm256_fmadd_ps(b, w0, c10);
    c11 = _mm256_fmadd_ps(b, w1, c11);
    b = _mm256_broadcast_ss(x2 + k);
    c20 = _mm256_fmadd_ps(b, w0, c20);
    c21 = _mm256_fmadd_ps(b, w1, c21);
    b = _mm256_broadcast_ss(x3 + k);
    c30 = _mm256_fmadd_ps(b, w0, c30);
    c31 = _mm256_fmadd_ps(b, w1, c31);
    b = _mm256_broadcast_ss(x4 + k);
    c40 = _mm256_fmadd_ps(b, w0, c40);
    c41 = _mm256_fmadd_ps(b, w1, c41);
    b = _mm256_broadcast_ss(x5 + k);
    c50 = _mm256_fmadd_ps(b, w0, c50);
    c51 = _mm256_fmadd_ps(b, w1, c51);
  }
  alignas(32) float t[MR][NR];
  _mm256_store_ps(t[0], c00); _mm256_store_ps(t[0] + 8, c01);
  _mm256_store_ps(t[1], c10); _mm256_store_ps(t[1] + 8, c11);
  _mm256_store_ps(t[2], c20); _mm256_store_ps(t[2] + 8, c21);
  _mm256_store_ps(t[3], c30); _mm256_store_ps(t[3] + 8, c31);
  _mm256_store_ps(t[4], c40); _mm256_store_ps(t[4] + 8, c41);
  _mm256_store_ps(t[5], c50); _mm256_store_ps(t[5] + 8, c51);
  for (int r = 0; r < rows; ++r) {
    float* o = out + r * N;
    if (nc == NR) {
      __m256 v0 = _mm256_load_ps(t[r]), v1 = _mm256_load_ps(t[r] + 8);
      if (!first) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(o));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(o + 8));
      }
      _mm256_storeu_ps(o, v0);
      _mm256_storeu_ps(o + 8, v1);
    } else {
      for (int j = 0; j < nc; ++j) o[j] = first ? t[r][j] : o[j] + t[r][j];
    }
  }
}

void gemm_wide(const float* xp, const at::BFloat16* wp, float* op, int64_t M, int64_t K, int64_t N) {
  const int64_t panels = (N + NR - 1) / NR;
  const int64_t full = M / MR * MR;
  // K outer: one KC-wide slice of x (M × KC floats) stays in cache while every panel passes over it.
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = std::min(KC, K - k0);
    // The last M % MR rows of this slice, padded with zero rows to a full tile.
    alignas(32) float tail[MR * KC] = {};
    for (int64_t m = full; m < M; ++m) std::memcpy(tail + (m - full) * KC, xp + m * K + k0, kc * sizeof(float));
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      alignas(32) float buf[KC * NR];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * NR;
        const int nc = static_cast<int>(std::min<int64_t>(NR, N - n0));
        pack_panel(wp, K, n0, nc, k0, kc, buf);
        for (int64_t m = 0; m < full; m += MR) tile(xp + m * K + k0, K, buf, kc, op + m * N + n0, N, MR, nc, k0 == 0);
        if (full < M) tile(tail, KC, buf, kc, op + full * N + n0, N, static_cast<int>(M - full), nc, k0 == 0);
      }
    });
  }
}

}  // namespace

// out[M, N] (fp32) = x[M, K] (fp32) @ w[N, K]^T (bf16)
torch::Tensor linear_bf16_weight(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "shapes: x [M, K], w [N, K]");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kBFloat16, "x float32, w bfloat16");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous() && x.is_cpu() && w.is_cpu(), "contiguous CPU tensors");
  TORCH_CHECK(x.size(1) % 8 == 0, "K must be a multiple of 8");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto out = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const at::BFloat16* wp = w.data_ptr<at::BFloat16>();
  float* op = out.data_ptr<float>();
  if (M >= WIDE_ROWS) {
    gemm_wide(xp, wp, op, M, K, N);
    return out;
  }
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const at::BFloat16* wr = wp + n * K;
      int64_t m = 0;
      for (; m + 4 <= M; m += 4) rows_dot<4, 2>(xp + m * K, K, wr, op + m * N + n, N);
      switch (M - m) {
        case 3: rows_dot<3, 2>(xp + m * K, K, wr, op + m * N + n, N); break;
        case 2: rows_dot<2, 4>(xp + m * K, K, wr, op + m * N + n, N); break;
        case 1: rows_dot<1, 4>(xp + m * K, K, wr, op + m * N + n, N); break;
        default: break;
      }
    }
  });
  return out;
}
"""


def cpu_lacks_bf16() -> bool:
    """Whether torch runs this CPU's bf16 matmuls without native support (AVX2: the kernel helps; AVX-512: not)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def _built() -> bool:
    from torch.utils.cpp_extension import _get_build_directory

    try:  # it creates the folder if missing: a read-only image simply has no kernel
        return any(Path(_get_build_directory(_NAME, verbose=False)).glob(f"{_NAME}*.so"))
    except OSError:
        return False


@cache
def _load() -> Any:
    from torch.utils.cpp_extension import load_inline

    return load_inline(_NAME, cpp_sources=_SOURCE, functions=["linear_bf16_weight"],
                       extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])


def kernel(mode: Mode) -> Any | None:
    """The compiled kernel if `mode` wants it on this CPU (see the module docstring), else None."""
    if mode not in MODES:
        raise ValueError(f"cpu kernels must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off" or not cpu_lacks_bf16():
        return None
    if mode == "auto" and not _built():
        log.info("bf16 CPU kernel not built (python -m smartspec.engine.cpu_bf16 build); bf16 matmuls use torch's")
        return None
    try:
        return _load()
    except Exception as exc:  # no compiler, no OpenMP: torch's path still works
        if mode == "on":
            raise RuntimeError(f"cannot build the bf16 CPU kernel: {exc}") from exc
        log.warning("bf16 CPU kernel unavailable (%s); bf16 matmuls use torch's", exc)
        return None


class _Bf16Linear:
    """A Linear's forward through the kernel for bf16 CPU inputs; anything else goes to torch's."""

    def __init__(self, module: torch.nn.Linear, ext: Any) -> None:
        self.module, self.ext = module, ext

    def __deepcopy__(self, memo: dict[int, Any]) -> _Bf16Linear:
        # A copied model's layers use the copy's weights; the compiled kernel is shared, never copied.
        return _Bf16Linear(copy.deepcopy(self.module, memo), self.ext)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mod = self.module
        if (x.dtype != torch.bfloat16 or x.device.type != "cpu" or torch.compiler.is_compiling()
                or (x.requires_grad and torch.is_grad_enabled())):
            return torch.nn.functional.linear(x, mod.weight, mod.bias)
        shape = x.shape
        out = self.ext.linear_bf16_weight(x.reshape(-1, shape[-1]).float().contiguous(), mod.weight)
        if mod.bias is not None:
            out += mod.bias.float()
        return out.to(torch.bfloat16).reshape(*shape[:-1], out.shape[-1])


def use_cpu_bf16_kernel(model: torch.nn.Module, mode: Mode = "auto") -> int:
    """Route `model`'s bf16 CPU Linear layers through the kernel where `mode` wants it; returns how many.
    `off` (or a CPU or model it does not suit) puts every layer back on torch's path."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for module in linears:
        module.__dict__.pop("forward", None)
    suited = [m for m in linears if m.weight.dtype == torch.bfloat16 and m.weight.device.type == "cpu"
              and m.weight.is_contiguous() and m.weight.shape[1] % 8 == 0]
    ext = kernel(mode) if suited else None  # a GPU or fp32 model never looks for the kernel
    count = 0
    for module in suited if ext is not None else []:
        module.forward = _Bf16Linear(module, ext)  # type: ignore[method-assign,assignment]
        count += 1
    if count:
        log.info("bf16 CPU kernel on %d Linear layers", count)
    return count


if __name__ == "__main__":  # python -m smartspec.engine.cpu_bf16 build
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m smartspec.engine.cpu_bf16 build")
    if not cpu_lacks_bf16():
        print(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has bf16 matmuls of its own: nothing to build")
        sys.exit(0)
    _load()
    print("bf16 CPU kernel built")
