"""A SavedModel is code: loading one says so, once per path."""

import logging

import pytest


@pytest.mark.slow  # Exports and loads a SavedModel (35 s).
def test_loading_a_savedmodel_warns_once_that_it_must_be_trusted(delf_model, tmp_path, caplog):
  from delf_ret.extract.saved_model import SavedModelExtractor
  from delf_ret.extract.saved_model import export_saved_model

  path = export_saved_model(delf_model, tmp_path / "exported")
  with caplog.at_level(logging.WARNING):
    SavedModelExtractor(path)
    SavedModelExtractor(path)
  warnings = [r.getMessage() for r in caplog.records if "is a SavedModel" in r.getMessage()]
  assert len(warnings) == 1
  assert "runs the TensorFlow graph" in warnings[0] and "source you trust" in warnings[0]
