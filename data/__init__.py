"""xaiscope.data: readers and generators of geoscience datasets, returned as xarray objects with CF names and units.

Never imports panel or torch models.
"""
