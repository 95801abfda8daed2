"""Looking at data and errors with a pathologist: the data audit, error analysis and label review.

:mod:`glomlib.evaluate` measures a model: numbers with confidence intervals that go into a results table. This room
produces material a person judges image by image: galleries, heat maps, duplicate pairs, flagged images and review
sheets whose decisions flow back into the manifest. It reads the measurements (predictions, fold models, plots) but
nothing in evaluate reads it, so it sits one layer above evaluate and below train; keeping it apart keeps the
measuring code small enough to audit and lets the review tools (widgets, HTML pages, cleanlab) grow without touching it.
"""
