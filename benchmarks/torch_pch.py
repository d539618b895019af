"""Precompile torch/extension.h for the torch-scatter and torch-sparse source builds of `make bench`.

    python -m benchmarks.torch_pch DIR    # prints the CFLAGS / CXXFLAGS to build both packages with

Neither package has wheels for torch 2.13, and every one of their 30 C++ files starts by parsing
torch/extension.h: about half of each file's compile time on 2 cores (scatter_cpu.cpp: 46 s, 24 s
with the header precompiled). GCC reuses a precompiled header only when the flags it was built
with match the compile's, so this builds it with the flags both packages' setup.py and torch's
BuildExtension pass on Linux; a mismatch or any other compiler makes GCC ignore it, and the build
is as slow as before, never different. `-g0` drops the debug info that Python's own CFLAGS (-g)
ask for: both packages strip it at link time (-s) anyway.

The printed flags are Python's CFLAGS plus ours, for both CFLAGS and CXXFLAGS: setuptools replaces
(not extends) its defaults with them, torch-sparse compiles through torch's ninja path, which reads
CFLAGS, and torch-scatter (`use_ninja=False`) through setuptools' C++ compiler, which reads
CXXFLAGS. Without GCC, or if the header fails to build, they lack only the `-include`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

NO_DEBUG = "-g0"


def base_flags() -> list[str]:
    """Python's own CFLAGS (which setuptools drops once CFLAGS is set) and `-g0` after its `-g`."""
    return [*shlex.split(sysconfig.get_config_var("CFLAGS") or ""), NO_DEBUG]


def compile_flags() -> list[str]:
    """The flags a torch-scatter / torch-sparse CPU compile gets, up to include dirs and per-file macros."""
    from torch.utils.cpp_extension import include_paths

    return [
        *base_flags(),
        "-fPIC",
        "-DWITH_PYTHON",
        *[f"-I{p}" for p in include_paths()],
        f"-I{sysconfig.get_paths()['include']}",
        "-O3",
        "-Wno-sign-compare",
        "-DAT_PARALLEL_OPENMP",
        "-fopenmp",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-std=c++20",
    ]


def build(out_dir: Path) -> str:
    """Build DIR/torch_extension.h.gch; return the compile flags that use it."""
    plain = shlex.join(base_flags())
    cxx = os.environ.get("CXX") or (sysconfig.get_config_var("CXX") or "c++").split()[0]
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return plain
    if sys.platform != "linux" or "Free Software Foundation" not in version:
        return plain
    out_dir.mkdir(parents=True, exist_ok=True)
    header = out_dir / "torch_extension.h"
    header.write_text("#include <torch/extension.h>\n")
    cmd = [cxx, *compile_flags(), "-x", "c++-header", str(header), "-o", f"{header}.gch"]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        return plain
    return f"{plain} -include {shlex.quote(str(header.resolve()))}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.torch_pch DIR")
    print(build(Path(sys.argv[1])))
