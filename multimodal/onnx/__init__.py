"""ONNX export of the inference graphs (export.py, graphs.py, transforms.py) and the ONNX Runtime tasks (runtime.py)."""
