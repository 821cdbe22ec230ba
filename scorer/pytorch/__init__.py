"""The PyTorch side (needs the `train` extra): the classifier, its checkpoints, the step loop."""
