"""Export (SavedModel, TFLite, `.keras`, the mapping JSON), verification and model loading."""
