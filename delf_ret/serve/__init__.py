"""The local web page over an index (``delf_serve``): search by photo, see why it matched.

``service`` holds what a page query needs in memory (model, index, every database
image's features) and answers queries, draws match pictures and changes the gallery;
``jobs`` runs that work on one worker thread while the page polls; ``app`` is the
Flask application (templates and static files ship in this package); ``demo`` indexes
the bundled demo photos into a cache folder on first start. Flask is the ``[serve]``
extra; TensorFlow is imported only by the service's extractor.
"""
