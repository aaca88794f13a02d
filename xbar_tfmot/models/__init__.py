"""Reading and rewriting Keras models of either flavour: layer introspection, channel analysis,
reorder, the crossbar report, the crossbar-explicit model and building a mapping from a model.
Imports neither Keras package at module level: models are read through their objects."""
