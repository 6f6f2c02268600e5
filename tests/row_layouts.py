"""Row layouts the fast-path tests share (imported by tests/test_fast_paths.py and
tests/test_loss_fast_paths.py; not a test module)."""
import numpy as np

L = 16
# Single documents (one unpadded row, two right-padded), and packed documents (one row without
# padding, one with, one single document + padding).
PADDED = (np.arange(L)[None, :] < np.array([[L], [11], [3]])).astype(np.int32)
PACKED = np.array([[1] * 5 + [2] * 7 + [3] * 4,
                   [1] * 3 + [2] * 2 + [3] * 6 + [0] * 5,
                   [1] * 9 + [0] * 7], np.int32)
