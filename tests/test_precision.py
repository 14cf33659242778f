"""`auto` precision (issue 16): bf16 wherever this CPU does it fast and safely, fp32 elsewhere;
decided by the CPU's flags where they suffice, else by a micro-benchmark measured once per
machine; printed at the start of a run and stored with it."""

from __future__ import annotations

import json

import pytest

from gcpo_cli import precision
from gcpo_cli import recipe_load as recipes


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU with the given flags and measured speeds; counts benchmark calls."""
    monkeypatch.setenv("GCPO_HOME", str(tmp_path / "home"))
    calls = []

    def make(flags: set[str], amx: bool = False, speeds=(80.0, 180.0, 0.003)):
        import torch

        monkeypatch.setattr(precision, "cpu_flags", lambda: set(flags))
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(precision, "benchmark", lambda: calls.append(1) or speeds)
        precision.detect.cache_clear()
        return calls

    yield make
    precision.detect.cache_clear()


def test_amx_means_bf16_from_the_flag_alone(cpu):
    calls = cpu({"avx512f", "amx_bf16", "amx_tile"}, amx=True)
    p = precision.detect("cpu")
    assert p.bf16 and p.reason == "CPU with AMX tiles" and calls == []


def test_a_cpu_without_native_bf16_stays_fp32_without_measuring(cpu):
    calls = cpu({"avx2", "fma", "avx512f"})
    p = precision.detect("cpu")
    assert not p.bf16 and p.reason == "CPU without native bf16" and calls == []


def test_avx512_bf16_is_measured_once_per_machine_and_cached(cpu, tmp_path):
    calls = cpu({"avx512f", "avx512_bf16"})
    p = precision.detect("cpu")
    assert p.bf16 and calls == [1]
    assert p.reason == "CPU with AVX512-BF16: bf16 matmul 180 vs fp32 80 GFLOP/s, measured once"
    cached = json.loads((tmp_path / "home" / "cache" / "precision.json").read_text())
    assert cached["precision"]["bf16_gflops"] == 180.0
    precision.detect.cache_clear()  # a new process on the same machine reads the cache
    assert precision.detect("cpu") == p and calls == [1]


@pytest.mark.parametrize("speeds, why", [
    ((100.0, 110.0, 0.003), "bf16 matmul 110 vs fp32 100"),  # no faster: not worth the rounding
    ((80.0, 180.0, 0.5), "bf16 error 0.5 too large"),  # a broken kernel
])
def test_avx512_bf16_stays_fp32_when_bf16_is_not_faster_or_not_safe(cpu, speeds, why):
    cpu({"avx512f", "avx512_bf16"}, speeds=speeds)
    p = precision.detect("cpu")
    assert not p.bf16 and why in p.reason


def test_another_machine_measures_again(cpu, tmp_path, monkeypatch):
    calls = cpu({"avx512f", "avx512_bf16"})
    precision.detect("cpu")
    precision.detect.cache_clear()
    monkeypatch.setattr(precision, "cpu_name", lambda: "Another CPU")  # same GCPO_HOME, another host
    precision.detect("cpu")
    assert calls == [1, 1]


def test_the_benchmark_measures_both_dtypes():
    fp32, bf16, error = precision.benchmark(seconds=0.01)
    assert fp32 > 0 and bf16 > 0 and error < 0.02  # bf16 rounding of a 576-term dot product


def test_auto_follows_the_decision_and_explicit_settings_win(cpu, tmp_path):
    from gcpo_cli.model import MergedSampler, autocast_enabled, build_tiny, load_base

    r = recipes.load("tiny", [f"model.name={build_tiny(tmp_path / 'tiny')}"])
    model, _, _ = load_base(r.model)
    cpu({"avx512f", "avx512_bf16"}, speeds=(80.0, 180.0, 0.003))
    assert autocast_enabled(model, "auto") and autocast_enabled(model, "bfloat16")
    assert str(next(MergedSampler(model, "auto").model.parameters()).dtype) == "torch.bfloat16"
    cpu({"avx2"})
    assert not autocast_enabled(model, "auto") and autocast_enabled(model, "bfloat16")
    assert str(next(MergedSampler(model, "auto").model.parameters()).dtype) == "torch.float32"


def test_a_run_prints_and_stores_its_machine_and_precision(cpu, db, tmp_path):
    from gcpo_cli import train as training
    from gcpo_cli.model import build_tiny

    cpu({"avx512f", "avx512_bf16"}, speeds=(80.0, 180.0, 0.003))
    messages = []

    class Display(training.NullDisplay):
        def message(self, text):
            messages.append(text)

    r = recipes.load("tiny", [f"model.name={build_tiny(tmp_path / 'tiny')}", "steps=1", "max_new_tokens=4"])
    summary = training.train(db, r, display=Display())
    env = json.loads(db["runs"].get(summary["run_id"])["environment_json"])
    assert env["update_precision"] == "bfloat16" and env["sampler_dtype"] == "bfloat16"
    assert env["device"] == "cpu" and env["torch"] and env["threads"] >= 1
    line = [m for m in messages if m.startswith("precision:")]
    assert line == [f"precision: update bf16, sampling bf16 on {env['cpu']}, {env['threads']} threads "
                    "(CPU with AVX512-BF16: bf16 matmul 180 vs fp32 80 GFLOP/s, measured once)"]


def test_under_bf16_autocast_the_frozen_base_is_bf16_and_the_lora_weights_fp32(db, tmp_path):
    """The update runs the base as the bf16 sampler does (a bf16 residual stream, no per-matmul
    casts of activations); the trained weights and their optimiser state stay fp32."""
    import torch

    from gcpo_cli import train as training
    from gcpo_cli.model import build_tiny

    r = recipes.load("tiny", [f"model.name={build_tiny(tmp_path / 'tiny')}", "model.autocast=bfloat16"])
    ctx = training.setup(db, r, None, None, None, training.NullDisplay())
    try:
        params = dict(ctx.model.named_parameters())
        lora = {n: p.dtype for n, p in params.items() if "lora_" in n}
        base = {n: p.dtype for n, p in params.items() if "lora_" not in n}
        assert lora and set(lora.values()) == {torch.float32}
        assert base and set(base.values()) == {torch.bfloat16}
    finally:
        ctx.lock.close()
