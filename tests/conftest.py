"""Suite-wide JAX settings: 8 fake CPU devices (sharding tests), strict rank promotion, one
persistent compilation cache per run."""
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole run: the xdist controller creates it (and
# removes it at the end), the workers and every subprocess (CLI runs, the notebook's kernel) inherit
# the variables. Tests rebuild the same steps and models many times over, in both workers; an
# identical program then compiles once (compilation is about half the time of the unit-test files).
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="ptm_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """One prepared-data/tokenizer cache per test process (real corpora are prepared once in each).

  Autouse, so no test falls back to the user's ~/.cache/ptm_jax; under pytest-xdist each worker has
  its own temporary directory, so two workers never prepare the same tfds builder at once.
  """
  path = os.environ.get("PTM_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("ptm_data"))
  os.environ["PTM_JAX_DATA_DIR"] = path
  return path


def pytest_sessionfinish(session):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
