"""Reading and rewriting Keras models of either flavour: layer introspection, channel analysis,
reorder, the crossbar report, the crossbar-explicit model, building a mapping from a model,
the analog model of a chip and the hardware sweep over chips (`hardware_sweep`).
Imports neither Keras package at module level: models are read through their objects."""
