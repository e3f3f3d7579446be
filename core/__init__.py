"""xaiscope.core: models, checkpoints and the methods (states, attribution, adjoint, influence).

Pure computation on tensors and xarray objects; never imports panel or any UI library.
"""
