"""ONNX Runtime inference: checked sessions, texts to labels, the self-check and NaN rescue."""
