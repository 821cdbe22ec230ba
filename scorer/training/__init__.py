"""`scorer train`: labelled data, fine-tuning with a validation split, the loss plot."""
