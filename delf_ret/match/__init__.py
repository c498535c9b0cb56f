"""Matching two feature sets: putative correspondences, then RANSAC verification.

Pure numpy / scikit-image; no TensorFlow, no file I/O.
"""

from delf_ret.match.putative import DescriptorMatcher, putative_matches
from delf_ret.match.verify import (
  RansacParams,
  Verification,
  add_seconds,
  verify_candidates,
  verify_matches,
  verify_pair,
)

__all__ = [
  "DescriptorMatcher",
  "putative_matches",
  "RansacParams",
  "Verification",
  "add_seconds",
  "verify_candidates",
  "verify_matches",
  "verify_pair",
]
