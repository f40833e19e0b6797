"""Face geometry in pure numpy/numba: morphable model, pose, rasteriser, UV layout, crop, sample I/O, metrics.

Nothing here imports torch; importing the package does no work beyond definitions.
"""
