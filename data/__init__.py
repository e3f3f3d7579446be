"""xaiscope.data: readers and generators of geoscience datasets, returned as xarray objects with CF names and units.

Never imports panel or torch models.
"""
from xaiscope.data.camels import (
    demo_basin, load_basin, load_basins, read_basin_list, read_forcing, read_model_output, read_streamflow,
)
from xaiscope.data.errors import DataError, DataFileError, DataParameterError, UnknownBasinError
from xaiscope.data.synthetic import synthetic_basin
from xaiscope.data.windows import INPUTS, TARGET, Windows, compute_stats, make_windows, window_ending

__all__ = [
    "demo_basin", "load_basin", "load_basins", "read_basin_list", "read_forcing", "read_model_output",
    "read_streamflow", "synthetic_basin", "INPUTS", "TARGET", "Windows", "compute_stats", "make_windows",
    "window_ending", "DataError", "DataFileError", "DataParameterError", "UnknownBasinError",
]
