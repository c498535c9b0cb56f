"""Contact-sheet captions are broken into lines that fit above their own tile."""

from delf_ret.evaluation.visualize import fit_caption


def test_long_image_ids_break_after_an_underscore():
  assert fit_caption("2. piazza_san_marco_43351518_2659980686\n4 inliers, other") == (
    "2. piazza_san_marco_43351518_\n2659980686\n4 inliers, other"
  )


def test_short_lines_are_kept_and_unbroken_words_cut_at_the_width():
  assert fit_caption("1. graf1\n12 inliers, same place") == "1. graf1\n12 inliers, same place"
  assert fit_caption("a" * 35, width=30) == "a" * 30 + "\n" + "a" * 5


def test_every_line_fits():
  text = "query united_states_capitol_98169888_3347710852_and_a_very_long_tail_of_words"
  assert all(len(line) <= 30 for line in fit_caption(text).split("\n"))
