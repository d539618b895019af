"""Test-wide settings: 8 simulated CPU devices, offline Hugging Face, parsed absl flags, and one
JAX compilation cache for the session.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here, at collection time.
Single-device tests use `jax.devices()[0]` explicitly or run unsharded.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import loop_fixtures  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain 0.2.18 worker processes read an absl flag (google/grain#1355)


@pytest.fixture(scope="session", autouse=True)
def persistent_compilation_cache(tmp_path_factory):
    """One JAX compilation cache for the session: the many tests that build the same tiny models and
    train steps compile each program once. Programs that compile in under a second are not kept."""
    with loop_fixtures.compilation_cache_at(tmp_path_factory.mktemp("xla_session_cache"), 1.0):
        yield
