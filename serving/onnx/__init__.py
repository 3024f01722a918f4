"""ONNX export, file metadata, int8, ONNX Runtime sessions and the export cache."""
