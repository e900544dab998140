"""ONNX plumbing every stage shares: the graph index, op tables, name allocation, ONNX Runtime
sessions."""
