"""Which glomeruli to label next (``glomlib select``), and whether choosing beats random (``--simulate``)."""

from glomlib.select.strategies import STRATEGIES, Picks, PoolTooLargeError, pick

__all__ = ["STRATEGIES", "Picks", "PoolTooLargeError", "pick"]
