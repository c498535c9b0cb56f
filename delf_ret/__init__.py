"""delf-ret: landmark image retrieval with DELF-style local features.

Conventions used throughout the package (written down once, here):

* Images are ``numpy.uint8`` arrays of shape ``[H, W, 3]`` in RGB order.
* Point coordinates are ``(y, x)`` pairs, i.e. (row, column), in pixels of the
  *original* image, as float32; arrays of points have shape ``[N, 2]``.
* Descriptors are float32 arrays of shape ``[N, D]``, one row per feature,
  L2-normalised.
"""

__version__ = "0.1.0"
