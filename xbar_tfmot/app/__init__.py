"""The application on top of the library: the `xbar-prune` pipeline, its configuration, run
report and plots, datasets, the model zoo and the command-line entry points. The library never
imports this package; absl, ml_collections, matplotlib and scikit-learn are used only here."""
