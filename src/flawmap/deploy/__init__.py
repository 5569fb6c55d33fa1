"""The model on the line: calibrated predictors over a model folder (PyTorch) or an exported model."""
