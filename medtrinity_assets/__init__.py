"""MedTrinity-style image–ROI–description triplets as a Dagster code location.

Importing the package is cheap: Dagster definitions live in ``medtrinity_assets.definitions``.
"""

__version__ = "0.1.0"
