"""Special-token ids shared by tokenizers, objectives and heads."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the reserved tokens of a vocabulary; objectives never corrupt these."""

  vocab_size: int
  pad: int = 0
  unk: int = 1
  cls: int = 2  # also BOS for decoders
  sep: int = 3  # also EOS for decoders
  mask: int = 4
  # Extra reserved ids (T5 sentinels, [START] of GLM, ...), never produced by corruption noise.
  extra: tuple[int, ...] = ()

  @property
  def reserved(self) -> tuple[int, ...]:
    """Every id that must never be masked or sampled as a random replacement."""
    return tuple(sorted({self.pad, self.unk, self.cls, self.sep, self.mask, *self.extra}))

  @property
  def bos(self) -> int:
    return self.cls

  @property
  def eos(self) -> int:
    return self.sep
