"""Getting benchmark data: official downloads (Oxford5k, Paris6k, Revisited) and small labelled benchmarks."""
