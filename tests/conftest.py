"""Test-wide settings: 8 simulated CPU devices, offline Hugging Face, parsed absl flags, and one
JAX compilation cache for the session.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here, at collection time.
Single-device tests use `jax.devices()[0]` explicitly or run unsharded.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One JAX compilation cache for the whole run, every program kept: set before the xdist workers
# start, so both workers and every child process a test starts inherit it and read what another
# compiled (the many tests that build the same tiny models, steps and pipelines). A read still
# counts as a compilation in JAX's events, so the tests that count compiles see the same numbers.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="star_jax_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import loop_fixtures  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 worker processes read an absl flag (google/grain#1355)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the process that made it, after the workers
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def persistent_compilation_cache():
    """The run's JAX compilation cache (above) in this process's settings too, in case JAX was
    imported before the variables were set; a test may point JAX elsewhere and restore it."""
    with loop_fixtures.compilation_cache_at(os.environ["JAX_COMPILATION_CACHE_DIR"]):
        yield
