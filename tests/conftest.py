"""Suite-wide JAX settings: 8 fake CPU devices (sharding tests) and strict rank promotion."""
import os

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config, items):
  """Tests marked `long` go first (stable otherwise).

  `make test` hands whole files to two pytest-xdist workers in collection order; the notebook's
  quickstart run (~8 minutes) sorted late and then ran alone while the other worker sat idle
  (27.1 min in all). Started first, it overlaps the rest of the suite. Every worker sorts the
  same collection the same way, as xdist requires.
  """
  del config
  items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """One prepared-data/tokenizer cache per test process (real corpora are prepared once in each).

  Autouse, so no test falls back to the user's ~/.cache/ptm_jax; under pytest-xdist each worker has
  its own temporary directory, so two workers never prepare the same tfds builder at once.
  """
  path = os.environ.get("PTM_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("ptm_data"))
  os.environ["PTM_JAX_DATA_DIR"] = path
  return path
