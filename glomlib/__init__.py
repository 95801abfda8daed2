"""glomlib: a notebook-first toolkit for computational nephropathology.

Data flow (one way): manifest -> validate/fingerprint -> patch cache -> SSL -> fine-tune -> evaluate/explain
-> notebooks executed by papermill -> HTML reports. Each step writes its own run folder.
"""

__version__ = "0.1.0"
