"""AsmkIndex against the reference ``asmk`` package (github.com/jenicek/asmk, PyPI asmk 0.1.1).

Both get the same codebook and descriptors; their image similarities must agree to
1e-5. The reference's HOW settings: database descriptors on 1 word, query descriptors
on 5, alpha 3, threshold 0, no idf.
"""

import numpy as np
import pytest

from conftest import random_unit_descriptors
from delf_ret.index.asmk import AsmkIndex
from delf_ret.index.asmk import AsmkParams
from delf_ret.index.asmk import train_codebook

reference = pytest.importorskip("asmk", reason="the reference asmk package is not installed")
from asmk import codebook as ref_codebook  # noqa: E402
from asmk import functional as ref_functional  # noqa: E402
from asmk import hamming as ref_hamming  # noqa: E402
from asmk import index as ref_index  # noqa: E402
from asmk import inverted_file as ref_inverted_file  # noqa: E402
from asmk import kernel as ref_kernel  # noqa: E402

WORDS = 64


def database(dim: int, seed: int):
  """Ten images of 40-120 unit descriptors, a codebook learned from them, and three queries:
  noisy parts of two database images and an unrelated image."""
  rng = np.random.default_rng(seed)
  images = [random_unit_descriptors(rng, int(rng.integers(40, 120)), dim) for _ in range(10)]
  codebook = train_codebook(np.concatenate(images), WORDS, iterations=8, seed=0)
  queries = []
  for source in (images[2][:50], images[7][10:]):
    noisy = source + 0.1 * random_unit_descriptors(rng, len(source), dim)
    queries.append((noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
  queries.append(random_unit_descriptors(rng, 60, dim))
  return images, codebook, queries


def reference_scores(images, codebook, queries, binary, alpha, threshold, hamming_bits=None):
  """Each query's similarity with each image [Q, I] by the reference package's codebook,
  kernel and inverted file. hamming_bits: divide Hamming distances by this many bits (None:
  the reference's default, the bits of its packed uint32 words)."""
  cdb = ref_codebook.Codebook(ref_index.FaissL2Index(), size=WORDS)
  cdb.index(codebook)
  kern = ref_kernel.ASMKKernel(cdb, binary=binary)
  ivf = ref_inverted_file.IVF.initialize_empty(codebook_size=WORDS, use_idf=False)
  descriptors = np.concatenate(images)
  image_ids = np.concatenate([np.full(len(x), number) for number, x in enumerate(images)])
  ivf.add(*kern.aggregate(*cdb.quantize(descriptors, image_ids, multiple_assignment=1)))

  def similarity(query_vector, vectors, ids):
    if hamming_bits is None:
      return kern.similarity(
        query_vector, vectors, ids, alpha=alpha, similarity_threshold=threshold
      )
    distance = ref_hamming.hamming_cdist_packed(query_vector.reshape(1, -1), vectors, hamming_bits)
    return ref_functional.asmk_kernel(
      1 - 2 * distance.squeeze(0), ids, alpha=alpha, similarity_threshold=threshold
    )

  result = np.zeros((len(queries), len(images)))
  for row, query in enumerate(queries):
    aggregated = kern.aggregate_image(*cdb.quantize(query, multiple_assignment=5))
    ranks, scores = ivf.search(*aggregated, similarity_func=similarity, topk=None)
    result[row, ranks] = scores
  return result


def delf_ret_scores(images, codebook, queries, binary, alpha, threshold):
  params = AsmkParams(
    codebook_size=WORDS,
    binary=binary,
    alpha=alpha,
    similarity_threshold=threshold,
    query_assignments=5,
    database_assignments=1,
  )
  index = AsmkIndex(codebook.shape[1], params)
  index.set_codebook(codebook)
  for number, descriptors in enumerate(images):
    index.add(str(number), descriptors)
  rows = []
  for query in queries:
    ids, scores = index.score_images(query)
    assert ids == [str(number) for number in range(len(images))]
    rows.append(scores)
  return np.array(rows)


@pytest.mark.parametrize("binary", [True, False], ids=["asmk_star", "asmk"])
def test_similarities_equal_the_reference_for_128_d_descriptors(binary):
  images, codebook, queries = database(128, seed=0)
  ours = delf_ret_scores(images, codebook, queries, binary, 3.0, 0.0)
  theirs = reference_scores(images, codebook, queries, binary, 3.0, 0.0)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  assert ours[0].argmax() == 2 and ours[1].argmax() == 7  # Not all zero: the kernels matched.
  assert ours[0, 2] > 0.1


@pytest.mark.parametrize(
  "binary, alpha, threshold",
  [(True, 3.0, 0.0), (False, 3.0, 0.0), (True, 2.0, 0.25), (False, 1.0, 0.5)],
)
def test_similarities_equal_the_reference_for_40_d_descriptors(binary, alpha, threshold):
  """DELF's 40-d descriptors. ASMK*: the reference divides Hamming distances by the 64 bits of
  its two packed uint32 words, delf-ret by the 40 bits of the descriptor (1 - 2 h / d as in the
  paper): compared with the reference's own Hamming distance divided by 40."""
  images, codebook, queries = database(40, seed=1)
  ours = delf_ret_scores(images, codebook, queries, binary, alpha, threshold)
  theirs = reference_scores(
    images, codebook, queries, binary, alpha, threshold, hamming_bits=40 if binary else None
  )
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  assert ours[0].argmax() == 2 and ours[1].argmax() == 7


def test_the_reference_divides_40_bit_hamming_distances_by_64():
  images, codebook, queries = database(40, seed=1)
  ours = delf_ret_scores(images, codebook, queries, True, 3.0, 0.0)
  stock = reference_scores(images, codebook, queries, True, 3.0, 0.0)
  by_64 = reference_scores(images, codebook, queries, True, 3.0, 0.0, hamming_bits=64)
  np.testing.assert_allclose(stock, by_64, atol=1e-9)
  assert np.abs(ours - stock).max() > 1e-3
