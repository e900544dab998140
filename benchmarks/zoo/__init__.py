"""lowbit's zoo: real pretrained ONNX models as users ship them inside pip wheels, realistic
offline data for each, and a runner that measures every preset on them (`python -m benchmarks.zoo.run`)."""
