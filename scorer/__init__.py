"""scorer: fine-tune a BERT sentence classifier, export it to ONNX, score large files with ONNX Runtime."""

__version__ = "0.1.0"
