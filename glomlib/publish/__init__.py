"""Publishing layer: the notebook pipeline (papermill), code-free HTML reports (nbconvert), pseudonyms."""
