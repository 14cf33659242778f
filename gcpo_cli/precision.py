"""Whether bf16 is the fast precision on this machine: the one decision behind every "auto"
(the update's autocast, the sampler's dtype, `gcpo eval`'s merged model).

- CUDA: bf16 where the GPU supports it.
- CPU with AMX tiles (Intel Sapphire Rapids and later): bf16, from the flag alone; its matrix
  units run bf16 several times faster than fp32.
- CPU with AVX512-BF16 but no AMX (AMD Zen 4/5, Intel Cooper Lake): the flag says bf16 dot
  products exist, not that oneDNN's kernels beat fp32 at our shapes, so a one-off
  micro-benchmark decides (issue 16 measured 78 vs 180 GFLOP/s, fp32 vs bf16, on a 2-core EPYC).
  The result is cached per machine (CPU model, flags, torch version, threads) in GCPO_HOME.
- Any other CPU: fp32 (bf16 would be emulated, and slower).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from dataclasses import asdict, dataclass

from . import paths

# bf16 must be at least this much faster than fp32 to be worth its rounding.
MIN_SPEEDUP = 1.3
# A representative update/decode matmul of the embedded model: tokens x hidden by hidden x MLP.
SHAPE = (1024, 576, 1536)


@dataclass(frozen=True)
class Precision:
    bf16: bool  # bf16 is the fast, safe precision here
    device: str  # "cuda" or "cpu"
    reason: str  # one line for people: why
    fp32_gflops: float | None = None  # measured (CPU micro-benchmark only)
    bf16_gflops: float | None = None

    def describe(self) -> str:
        return f"{'bf16' if self.bf16 else 'fp32'} ({self.reason})"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def detect(device: str) -> Precision:
    """The decision for `device` ("cuda" or "cpu"), computed once a process (and, where it
    needs a measurement, once a machine)."""
    import torch

    if device == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return Precision(ok, device, "CUDA with bf16" if ok else "this GPU has no bf16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return Precision(True, device, "CPU with AMX tiles")
    if "avx512_bf16" not in cpu_flags():
        return Precision(False, device, "CPU without native bf16")
    return _measured(device)


def _fingerprint() -> str:
    import torch

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma")))
    return json.dumps([cpu_name(), flags, torch.__version__, torch.get_num_threads()])


def _measured(device: str) -> Precision:
    cache = paths.cache_dir() / "precision.json"
    key = _fingerprint()
    try:
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return Precision(**cached["precision"])
    except (OSError, ValueError, TypeError, KeyError):
        pass  # absent or unreadable: measure again
    fp32, bf16, error = benchmark()
    fast = bf16 >= MIN_SPEEDUP * fp32 and error < 1e-2
    reason = (f"CPU with AVX512-BF16: bf16 matmul {bf16:.0f} vs fp32 {fp32:.0f} GFLOP/s, measured once"
              + ("" if error < 1e-2 else f"; bf16 error {error:.2g} too large"))
    result = Precision(fast, device, reason, round(fp32, 1), round(bf16, 1))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".precision.{os.getpid()}.json")
        tmp.write_text(json.dumps(dict(key=key, precision=asdict(result))))
        tmp.replace(cache)  # atomic: a concurrent run reads the old file or the new one
    except OSError:
        pass  # a read-only home: measure again next time
    return result


def benchmark(seconds: float = 0.15) -> tuple[float, float, float]:
    """(fp32 GFLOP/s, bf16 GFLOP/s, bf16's relative error) for SHAPE on the CPU, with torch's
    thread setting. Interleaved best-of rounds, so a busy machine slows both alike."""
    import torch

    m, k, n = SHAPE
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
    pairs = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    best = {dtype: 0.0 for dtype in pairs}
    for _ in range(3):
        for dtype, (x, y) in pairs.items():
            x @ y  # warm-up: oneDNN builds its kernel on first use
            t, reps = time.perf_counter(), 0
            while reps < 2 or time.perf_counter() - t < seconds:
                x @ y
                reps += 1
            best[dtype] = max(best[dtype], 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9)
    exact = a @ b
    error = float((pairs[torch.bfloat16][0] @ pairs[torch.bfloat16][1]).float().sub(exact).norm() / exact.norm())
    return best[torch.float32], best[torch.bfloat16], error
