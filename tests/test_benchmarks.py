"""The benchmark baselines compute what star_jax computes, so the speed ratios compare like with like."""

import os
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from star_jax.config import LLMTrainConfig
from star_jax.llm.losses import biencoder_losses

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package
from benchmarks.bench_llm import CONFIGS, flops_per_token, torch_loss  # noqa: E402


def test_torch_biencoder_loss_matches_ours():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    b, h = 6, 16
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    member, job = (unit(rng.normal(size=(b, h))).astype(np.float32) for _ in range(2))
    batch = {  # members 0 and 1 are the same person; job 3 repeats job 0; row 5 is a fill row
        "label": np.array([1, 1, 0, 1, 0, 1], np.int32),
        "valid": np.array([True, True, True, True, True, False]),
        "member_key": np.array([[0, 0], [0, 0], [1, 0], [2, 0], [3, 0], [4, 0]], np.int32),
        "job_key": np.array([[7, 0], [8, 0], [9, 0], [7, 0], [10, 0], [11, 0]], np.int32),
    }
    cfg = LLMTrainConfig()
    head = {"log_scale": np.float32(np.log(12.0)), "bias": np.float32(-3.0)}
    ours = biencoder_losses(jnp.asarray(member), jnp.asarray(job), head,
                            {k: jnp.asarray(v) for k, v in batch.items()}, cfg)["loss"]
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    theirs = torch_loss(torch.from_numpy(member), torch.from_numpy(job),
                        {k: torch.tensor(v) for k, v in head.items()}, t, cfg.bce_weight, cfg.triplet_margin)
    np.testing.assert_allclose(float(theirs), float(ours), rtol=1e-5)


def test_flops_per_token_counts_the_small_config():
    arch = CONFIGS["small"]["arch"]
    # 8 layers x (q, o: 1024^2; k, v: 1024 x 256; gate, up, down: 1024 x 3584) matmul weights.
    n = 8 * (2 * 1024 * 1024 + 2 * 1024 * 256 + 3 * 1024 * 3584)
    assert flops_per_token(arch, 512, train=True) == 4 * n + 6 * 512 * 1024 * 8
    assert flops_per_token(arch, 512, train=False) == 2 * n + 2 * 512 * 1024 * 8


@pytest.mark.slow
def test_torch_build_extension_compiles_with_the_precompiled_header(tmp_path):
    """GCC silently ignores a precompiled header whose flags differ from the compile's, so the check
    is that torch's own BuildExtension, given torch-scatter's compile arguments and our flags, reads
    the .gch (`-H` marks a used one with '!', a rejected one with 'x'). Both of BuildExtension's
    paths: ninja (torch-sparse) and setuptools' own compiler (torch-scatter, `use_ninja=False`)."""
    pytest.importorskip("torch")
    import subprocess

    from benchmarks import torch_pch

    flags = torch_pch.build(tmp_path / "pch")
    if "-include" not in flags:
        pytest.skip("no GCC here: the build runs without a precompiled header")
    gch = f"{(tmp_path / 'pch' / 'torch_extension.h').resolve()}.gch"
    for ninja in (True, False):
        src = tmp_path / f"ninja_{ninja}"
        src.mkdir()
        (src / "probe.cpp").write_text("#include <torch/extension.h>\nint probe() { return 1; }\n")
        (src / "setup.py").write_text(
            "from setuptools import setup\n"
            "from torch.utils.cpp_extension import BuildExtension, CppExtension\n"
            "args = {'cxx': ['-O3', '-Wno-sign-compare', '-DAT_PARALLEL_OPENMP', '-fopenmp']}\n"
            f"setup(name='probe', cmdclass={{'build_ext': BuildExtension.with_options(use_ninja={ninja})}},\n"
            "      ext_modules=[CppExtension('probe._probe_cpu', ['probe.cpp'],\n"
            "                   define_macros=[('WITH_PYTHON', None)], extra_compile_args=args)])\n"
        )
        env = {**os.environ, "CFLAGS": f"{flags} -H", "CXXFLAGS": f"{flags} -H"}
        out = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=src, env=env,
                             capture_output=True, text=True)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-2000:]
        assert f"! {gch}" in log, (ninja, [line for line in log.splitlines() if ".gch" in line][:3])
