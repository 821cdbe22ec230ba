"""scorer: fine-tune a BERT sentence classifier, export it to ONNX, score large files with ONNX Runtime."""

import os

__version__ = "0.2.0"

# ONNX Runtime's Linux builds (1.29 on) send usage telemetry by default, model file names and graph hashes among it;
# a nightly job over a company's data and models must not, unless its owner says so (ORT_DISABLE_TELEMETRY=0).
# Set before onnxruntime is first imported, which reads it then.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
