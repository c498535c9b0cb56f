"""How often verification says yes to unrelated photos: pairs that reach ``min_inliers``.

Pure Python; the inlier counts come from any verifier (delf_ret.match.verify_pair).
Photos carry a group label (a landmark, an object) or none (a distractor). A pair is
*unrelated* when its photos do not share a group; by kind:

- ``landmark-distractor``: one photo has a group, the other none;
- ``distractor-distractor``: neither has one (distractors are all different scenes);
- ``landmark-landmark``: two different groups.

Pairs of one group are related and not counted.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable
from typing import Mapping

KINDS = ("landmark-distractor", "distractor-distractor", "landmark-landmark")


def pair_kind(group_a: str | None, group_b: str | None) -> str | None:
  """The kind of an unrelated pair, or None when both photos show the same group.

  An empty string counts as no group (a distractor), as in labels.csv files.
  """
  group_a, group_b = group_a or None, group_b or None
  if group_a is None and group_b is None:
    return "distractor-distractor"
  if group_a is None or group_b is None:
    return "landmark-distractor"
  return None if group_a == group_b else "landmark-landmark"


@dataclasses.dataclass(frozen=True)
class FalsePositives:
  """Unrelated pairs that reach ``min_inliers``.

  pairs: per kind (:data:`KINDS`), the number of unrelated pairs checked.
  accepted: per kind, the (image_a, image_b, inliers) of those reaching min_inliers, most
    inliers first.
  """

  min_inliers: int
  pairs: dict[str, int]
  accepted: dict[str, list[tuple[str, str, int]]]

  def count(self, kind: str | None = None) -> int:
    """Accepted unrelated pairs of one kind, or of every kind (None)."""
    kinds = KINDS if kind is None else (kind,)
    return sum(len(self.accepted[k]) for k in kinds)

  def to_json(self) -> dict:
    """Counts per kind and the accepted pairs, for a results file."""
    return {
      "min_inliers": self.min_inliers,
      "pairs": dict(self.pairs),
      "accepted": {k: len(v) for k, v in self.accepted.items()},
      "accepted_pairs": {k: [list(p) for p in v] for k, v in self.accepted.items() if v},
    }


def count_false_positives(
  groups: Mapping[str, str | None],
  inliers_of: Callable[[str, str], int],
  min_inliers: int,
) -> FalsePositives:
  """Verifies every unrelated pair of ``groups`` (image id -> group or None) once.

  inliers_of(image_a, image_b): the number of verified inliers of a pair (called once per
  unordered unrelated pair, image_a before image_b in the mapping's order).
  min_inliers: the config's acceptance threshold (retrieval_config.min_inliers).
  """
  pairs = dict.fromkeys(KINDS, 0)
  accepted: dict[str, list[tuple[str, str, int]]] = {kind: [] for kind in KINDS}
  for image_a, image_b in itertools.combinations(groups, 2):
    kind = pair_kind(groups[image_a], groups[image_b])
    if kind is None:
      continue
    pairs[kind] += 1
    inliers = int(inliers_of(image_a, image_b))
    if inliers >= min_inliers:
      accepted[kind].append((image_a, image_b, inliers))
  for found in accepted.values():
    found.sort(key=lambda row: -row[2])
  return FalsePositives(min_inliers, pairs, accepted)
