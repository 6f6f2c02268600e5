"""Suite-wide settings: 8 fake CPU devices (sharding tests), strict rank promotion, and per run one
persistent compilation cache and one prepared-data directory, shared by every process."""
import collections
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere: the sharding tests compare 8 devices with 1.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# XLA compilation is most of the suite's time (2026-11-25, both workers, the notebook aside: 32 of
# 55 minutes were backend compiles) and most tests run each program they compile a handful of
# times. So compile without LLVM's optimisations (`jax_disable_most_optimizations`: -O0, no
# expensive passes; the same HLO, so the same semantics): compile time halves and the suite
# without the notebook took 22 instead of 28 minutes. Tests marked `runtime_bound` (hundreds of
# steps of one program, the quickstart job) get XLA's full optimisations back, in this process
# and in their subprocesses (below). Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to compile everything
# fully optimised.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One persistent XLA compilation cache for the whole run: the xdist controller creates it (and
# removes it at the end), the workers and every subprocess (CLI runs, the notebook's kernel) inherit
# the variables. Tests rebuild the same steps and models many times over, in both workers; an
# identical program then compiles once (compilation is about half the time of the unit-test files).
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="ptm_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

# One prepared-data directory (corpora, tokenizers, lexicons) for the whole run, made the same way:
# both workers and every subprocess read one copy, and `ptm_jax.data.cache_lock` makes whichever
# process asks first build an entry while the others wait for it.
_OWN_DATA = None
if "PTM_JAX_TEST_DATA_DIR" not in os.environ:
  _OWN_DATA = tempfile.mkdtemp(prefix="ptm_jax_test_data_")
  os.environ["PTM_JAX_TEST_DATA_DIR"] = _OWN_DATA

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session", autouse=True)
def data_dir():
  """The run's prepared-data/tokenizer cache (set $PTM_JAX_TEST_DATA_DIR to keep one across runs).

  Autouse, so no test falls back to the user's ~/.cache/ptm_jax.
  """
  path = os.environ["PTM_JAX_TEST_DATA_DIR"]
  os.environ["PTM_JAX_DATA_DIR"] = path
  return path


@pytest.fixture(autouse=True)
def _full_xla_optimisation_when_runtime_bound(request, monkeypatch):
  """A `runtime_bound` test compiles with XLA's full optimisations, here and in its subprocesses."""
  if request.node.get_closest_marker("runtime_bound") is None:
    yield
    return
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")  # CLI runs, the notebook's kernel
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


def pytest_collection_modifyitems(config, items):
  """The `long` test (the quickstart notebook, ~10 min) first, then files with more tests first.

  The Makefile's `--dist loadfile --no-loadscope-reorder` hands whole files to the two workers in
  this order, so the notebook runs beside the other worker from the start instead of alone at the
  end (where, with the rest of the suite at -O0, it was a third of the wall time). xdist's own
  order, without the flag, is the second key alone. Sorting is stable: tests keep their order
  within a file.
  """
  del config
  per_file = collections.Counter(item.nodeid.split("::")[0] for item in items)
  items.sort(key=lambda item: (item.get_closest_marker("long") is None,
                               -per_file[item.nodeid.split("::")[0]]))


def pytest_sessionfinish(session):
  for own in (_OWN_CACHE, _OWN_DATA):
    if own:
      shutil.rmtree(own, ignore_errors=True)
