"""The suite's compile settings (tests/conftest.py): -O0 by default, fully optimised on request."""
import os
import subprocess
import sys

import jax
import pytest

FLAG = "jax_disable_most_optimizations"


def _child_flag() -> bool:
  code = f"import jax; print(jax.config.values[{FLAG!r}])"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return out.stdout.strip() == "True"


@pytest.mark.runtime_bound
def test_runtime_bound_tests_and_their_subprocesses_compile_fully_optimised():
  assert jax.config.values[FLAG] is False
  assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "0"
  assert _child_flag() is False  # a CLI run or the notebook's kernel started from this test


def test_other_tests_follow_the_suite_default_and_the_marker_was_undone():
  # conftest's default is "1" (-O0); a developer's JAX_DISABLE_MOST_OPTIMIZATIONS=0 wins over it.
  wanted = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "t", "true", "y", "yes",
                                                                    "on")  # jax bool_env
  assert jax.config.values[FLAG] is wanted  # runs after the marked test above: restored
  assert _child_flag() is wanted
