"""PyTorch → ONNX: export with dynamic axes, graph optimisation, fp16/int8 variants, parity, TensorRT."""
