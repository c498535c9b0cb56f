"""Matching two feature sets: putative correspondences, then RANSAC verification.

numpy, faiss and OpenCV (scikit-image only when its RANSAC backend runs); no TensorFlow, no
file I/O.
"""

from delf_ret.match.putative import DescriptorMatcher
from delf_ret.match.putative import putative_matches
from delf_ret.match.verify import RansacParams
from delf_ret.match.verify import Verification
from delf_ret.match.verify import verify_candidates
from delf_ret.match.verify import verify_matches
from delf_ret.match.verify import verify_pair

__all__ = [
  "DescriptorMatcher",
  "putative_matches",
  "RansacParams",
  "Verification",
  "verify_candidates",
  "verify_matches",
  "verify_pair",
]
