"""Suite-wide JAX settings: 8 fake CPU devices (sharding tests) and strict rank promotion."""
import collections
import os

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(config, items):
  """Files with a test marked `long` first, then files by their number of tests (most first).

  `make test` hands whole files to two pytest-xdist workers in this order
  (`--no-loadscope-reorder`; xdist's own reorder sorts by test count alone). The notebook's
  quickstart run (~8 minutes, 2 tests in its file) was sorted late by that count and ran alone
  while the other worker sat idle (pytest 27.1 min); started first, it overlaps the rest. Tests
  keep their order inside a file, and every worker sorts the same collection the same way, as
  xdist requires.
  """
  del config
  files = [item.nodeid.split("::")[0] for item in items]
  count = collections.Counter(files)
  first = {}
  for index, name in enumerate(files):
    first.setdefault(name, index)
  long_files = {name for item, name in zip(items, files) if item.get_closest_marker("long")}
  order = sorted(range(len(items)), key=lambda i: (files[i] not in long_files, -count[files[i]],
                                                   first[files[i]], i))
  items[:] = [items[i] for i in order]


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory):
  """One prepared-data/tokenizer cache per test process (real corpora are prepared once in each).

  Autouse, so no test falls back to the user's ~/.cache/ptm_jax; under pytest-xdist each worker has
  its own temporary directory, so two workers never prepare the same tfds builder at once.
  """
  path = os.environ.get("PTM_JAX_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("ptm_data"))
  os.environ["PTM_JAX_DATA_DIR"] = path
  return path
