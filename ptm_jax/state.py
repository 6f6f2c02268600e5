"""TrainState: the only thing the jitted step carries from one step to the next."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step, params, optimizer state and the step rng; nothing else lives here."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
