"""Kernel check: which layers ONNX Runtime really runs on integer kernels.

A QDQ model is only a request: ONNX Runtime's optimizer fuses DequantizeLinear -> op ->
QuantizeLinear into an integer kernel (QLinearConv, QGemm, QLinearAdd, ...) only where its rules
allow, and silently runs the rest as DQ -> float op -> Q. Such a float island costs a dequantize,
a float kernel and a requantize — often slower than FP32. This reads the graph ONNX Runtime
actually executes (extended-level optimization: the QDQ fusions, without the layout rewrites)
and names every float compute node that consumes dequantized integers, with the plan's view of it:
`unfused` (the plan asked for INT8, ONNX Runtime declined) or `kept float` (the plan's choice).
"""

from __future__ import annotations

import os
import tempfile

import onnx
import onnxruntime as ort

from lowbit.plan.quant_plan import QuantPlan

# ops that move or reshape integers without arithmetic: not float islands when left unfused
_DATA_MOVEMENT = {"QuantizeLinear", "DequantizeLinear", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                  "Concat", "Slice", "Gather", "Split", "Identity", "Shape", "Cast"}


def executed_graph(model_bytes: bytes) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs after its QDQ fusions (extended level)."""
    fd, path = tempfile.mkstemp(suffix=".onnx", prefix="lowbit-fused-")
    os.close(fd)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = path
        ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        return onnx.load(path, load_external_data=False)
    finally:
        os.unlink(path)


def kernel_check(model_bytes: bytes, plan: QuantPlan | None = None) -> dict:
    """{"integer_kernels", "float_kernels", "unfused": [...], "kept_float": [...]} for a QDQ model.

    `unfused` lists nodes `plan` put in INT8 that ONNX Runtime runs in float (a defect: the model pays
    for Q/DQ and gains nothing); `kept_float` lists float nodes between integer ones that the plan
    chose (with its reason). Each entry: {"node", "op_type", "reason"}."""
    g = executed_graph(model_bytes).graph
    producer = {o: n for n in g.node for o in n.output}
    planned = plan.nodes if plan is not None else {}
    integer, floats, unfused, kept = 0, 0, [], []
    for node in g.node:
        if node.op_type in _DATA_MOVEMENT:
            continue
        if node.op_type.startswith("QLinear") or node.op_type in ("QGemm", "MatMulInteger", "ConvInteger",
                                                                   "DynamicQuantizeMatMul", "MatMulNBits",
                                                                   "GatherBlockQuantized", "NhwcMaxPool",
                                                                   "MatMulIntegerToFloat"):
            integer += 1
            continue
        floats += 1
        fed_by_dq = any(i in producer and producer[i].op_type == "DequantizeLinear"
                        and producer[i].input[0] in producer for i in node.input)
        if not fed_by_dq:
            continue
        p = planned.get(node.name)
        entry = {"node": node.name, "op_type": node.op_type}
        if p is not None and p.precision.startswith("int"):
            unfused.append({**entry, "reason": "planned INT8; ONNX Runtime did not fuse it into an integer kernel"})
        else:
            kept.append({**entry, "reason": p.reason if p is not None else "float op between integer kernels"})
    return {"integer_kernels": integer, "float_kernels": floats, "unfused": unfused, "kept_float": kept}
