"""The Keras-free core: crossbar geometry, the projection, packing, schedules, the policy and
the mapping document. TensorFlow and numpy only; nothing here imports Keras or TFMOT."""
