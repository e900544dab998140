"""Find the transformer patterns of an exported ONNX graph and choose what runs in integers.

Roles are read from the graph's structure, not from node names, so any BERT-like export works:

- `linear`: MatMul / Gemm with a constant 2-D weight; sub-roles `qkv` (output reshaped into heads
  and fed to an attention MatMul), `attn_out` (input is the merged attention context), `ffn_up`
  (output feeds the GELU), `ffn_down` (input is the GELU output), `other`;
- `attention`: MatMul of two activations (QK^T and probabilities x V);
- `outlier`: the float MatMul of a split linear layer's outlier channels (`transformers.outliers`:
  its input is a Gather of an activation's last axis);
- `softmax`, `layernorm` (LayerNormalization), `gelu` (Gelu / FastGelu or the Erf form),
  `residual` (Add of two activations whose output feeds a layer norm).

The transformer selection quantizes the linear layers' *inputs* and *weights* only (uint8 x int8,
one shared QuantizeLinear per input tensor), and leaves their outputs in float: ONNX Runtime then
fuses `DQ -> MatMul` into `MatMulIntegerToFloat`, the bias Add and GELU / SkipLayerNorm fusions
stay intact, and layer norm, softmax, GELU and the residual stream stay in float.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import onnx

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import weight_slots
from lowbit.plan.quant_plan import NodePlan
from lowbit.plan.selection import Selection

_SHAPE_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast"}

FLOAT_REASONS = {
    "layernorm": "layer norm stays in float: its statistics need float precision",
    "softmax": "softmax stays in float: numerically sensitive, no fast integer kernel on CPU",
    "gelu": "GELU stays in float (ONNX Runtime fuses it with the bias Add)",
    "residual": "residual add stays in float: the residual stream carries the outlier channels",
    "attention": "activation x activation attention MatMul stays in float: small at sentence lengths, "
                 "and quantizing it would put Q/DQ on the softmax path",
    "outlier": "outlier channels of a split linear layer stay in float: their range would set the "
               "integer grid of every other channel",
}


@dataclass
class TransformerPatterns:
    """Node names by role; `linear_role[node]` is qkv / attn_out / ffn_up / ffn_down / other."""

    linear: list[str] = field(default_factory=list)
    linear_role: dict[str, str] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)
    softmax: list[str] = field(default_factory=list)
    layernorm: list[str] = field(default_factory=list)
    gelu: list[str] = field(default_factory=list)
    residual: list[str] = field(default_factory=list)
    outlier: list[str] = field(default_factory=list)

    def role_of(self, node: str) -> str | None:
        for role in ("attention", "softmax", "layernorm", "gelu", "residual", "outlier"):
            if node in getattr(self, role):
                return role
        return "linear" if node in self.linear_role else None

    def counts(self) -> dict[str, int]:
        d = {"linear": len(self.linear), "attention": len(self.attention), "softmax": len(self.softmax),
             "layernorm": len(self.layernorm), "gelu": len(self.gelu), "residual": len(self.residual)}
        return d | ({"outlier": len(self.outlier)} if self.outlier else {})

    def is_transformer(self) -> bool:
        """Attention (two activation x activation MatMuls and a softmax), layer norms and linear
        layers: an encoder or decoder block, so the transformer INT8 path applies."""
        return len(self.attention) >= 2 and bool(self.softmax) and bool(self.layernorm) and bool(self.linear)

    def is_gelu_mlp(self) -> bool:
        """Linear layers with GELU between them and no attention: a transformer's feed-forward
        stack on its own (Magika v1: dense layers over one-hot bytes, TF-exported layer norms).
        Static INT8 on every tensor lost 4% of its top-1 there (0.940); the transformer recipe,
        which quantizes only the linear layers' inputs, kept 0.977."""
        return not self.attention and len(self.linear) >= 2 and bool(self.gelu)


def _follow(g: GraphIndex, tensor: str, down: bool, depth: int = 4,
            merges: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
    """Nodes reached from `tensor` through shape-only ops, scalings by a constant and the `merges`
    Adds (down: consumers, up: producers)."""
    found: list[onnx.NodeProto] = []
    frontier, seen = [tensor], set()
    for _ in range(depth):
        nxt = []
        for t in frontier:
            nodes = g.consumers.get(t, []) if down else [g.producer[t]] if t in g.producer else []
            for n in nodes:
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.op_type in _SHAPE_OPS or (n.op_type == "Add" and down and _has_const_input(g, n)) \
                        or (n.op_type == "Mul" and _has_const_input(g, n)) or n.name in merges:
                    nxt.extend(n.output if down else n.input[:1])
                else:
                    found.append(n)
        frontier = nxt
    return found


def _has_const_input(g: GraphIndex, node: onnx.NodeProto) -> bool:
    return any(g.constant(i) is not None for i in node.input)


def _is_linear(node: onnx.NodeProto, g: GraphIndex) -> bool:
    if node.op_type not in ("MatMul", "Gemm"):
        return False
    w_idx, _, _ = weight_slots(node, g)
    if w_idx is None or (node.op_type == "Gemm" and g.attr(node, "transA", 0)):
        return False
    return g.constant(node.input[w_idx]).ndim == 2


def find_patterns(model: onnx.ModelProto) -> TransformerPatterns:
    """The transformer patterns of `model` (an onnx.ModelProto)."""
    g = GraphIndex(model)
    p = TransformerPatterns()
    for node in g.graph.node:
        op = node.op_type
        if op == "Softmax":
            p.softmax.append(node.name)
        elif op in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"):
            p.layernorm.append(node.name)
        elif op in ("Gelu", "FastGelu", "BiasGelu", "Erf"):
            p.gelu.append(node.name)
        elif op == "MatMul" and _is_outlier_path(node, g):
            p.outlier.append(node.name)
        elif op == "MatMul" and not _is_linear(node, g) and all(g.constant(i) is None for i in node.input):
            p.attention.append(node.name)
        elif op == "Add" and not _has_const_input(g, node):
            if any(c.op_type in ("LayerNormalization", "SkipLayerNormalization")
                   for c in g.consumers.get(node.output[0], [])):
                p.residual.append(node.name)
    p.layernorm.extend(n for n in _decomposed_layernorms(g) if n not in p.layernorm)
    gelu_nodes = {g.nodes[n].output[0]: n for n in p.gelu}
    attention = set(p.attention)
    merges = frozenset(c.name for n in p.outlier for c in g.consumers.get(g.nodes[n].output[0], []) if c.op_type == "Add")
    for node in g.graph.node:
        if not _is_linear(node, g) or node.name in p.outlier:
            continue
        p.linear.append(node.name)
        below = _follow(g, node.output[0], down=True, merges=merges)
        above = _follow(g, node.input[0], down=False)
        if any(n.name in attention for n in below):
            role = "qkv"
        elif any(n.name in attention for n in above):
            role = "attn_out"
        elif any(n.op_type in ("Gelu", "FastGelu", "BiasGelu") or n.op_type == "Div" and
                 any(c.name in p.gelu for c in g.consumers.get(n.output[0], [])) for n in below):
            role = "ffn_up"
        elif _after_gelu(g, node.input[0], gelu_nodes):
            role = "ffn_down"
        else:
            role = "other"
        p.linear_role[node.name] = role
    return p


def _decomposed_layernorms(g: GraphIndex) -> list[str]:
    """Nodes of layer norms exported as arithmetic (opset < 17, e.g. Paddle): ReduceMean(x) ->
    Sub(x, mean) -> Pow / Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div, then the constant scale and
    shift. The chain's statistics need float precision as a fused LayerNormalization does."""
    found: list[str] = []
    for sub in g.graph.node:
        mean = g.producer.get(sub.input[1]) if sub.op_type == "Sub" and len(sub.input) == 2 else None
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != sub.input[0]:
            continue
        chain, div = [mean.name, sub.name], None
        centred = [sub.output[0]]
        for c in g.consumers.get(sub.output[0], []):  # an optimizer may move a Transpose in between
            if c.op_type in _SHAPE_OPS:
                chain.append(c.name)
                centred.append(c.output[0])
        for c in (c for t in centred for c in g.consumers.get(t, [])):
            if c.op_type == "Div" and c.input[0] in centred:
                div = c
            elif c.op_type in ("Pow", "Mul"):
                chain.append(c.name)
                node = c
                for op in ("ReduceMean", "Add", "Sqrt"):
                    nxt = [n for n in g.consumers.get(node.output[0], []) if n.op_type == op]
                    if not nxt:
                        break
                    node = nxt[0]
                    chain.append(node.name)
        if div is None or g.producer.get(div.input[1]) is None or g.producer[div.input[1]].name not in chain:
            continue
        chain.append(div.name)
        node = div
        for op in ("Mul", "Add"):  # the affine scale and shift
            nxt = g.consumers.get(node.output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != op or not _has_const_input(g, nxt[0]):
                break
            node = nxt[0]
            chain.append(node.name)
        found.extend(chain)
    return found


def _is_outlier_path(node: onnx.NodeProto, g: GraphIndex) -> bool:
    """MatMul(Gather(activation, constant indices, last axis), constant weight)."""
    src = g.producer.get(node.input[0])
    return (src is not None and src.op_type == "Gather" and g.constant(src.input[1]) is not None
            and g.constant(src.input[0]) is None and int(g.attr(src, "axis", 0)) == -1
            and g.constant(node.input[1]) is not None)


def _after_gelu(g: GraphIndex, tensor: str, gelu_outputs: dict[str, str], depth: int = 5) -> bool:
    """True if `tensor` is computed from a GELU within `depth` elementwise steps (x * 0.5 * (1 + erf))."""
    frontier = [tensor]
    for _ in range(depth):
        nxt = []
        for t in frontier:
            if t in gelu_outputs:
                return True
            n = g.producer.get(t)
            if n is not None and n.op_type in ("Mul", "Add", "Gelu", "FastGelu", "BiasGelu"):
                if n.op_type != "Mul" and n.op_type != "Add":
                    return True
                nxt.extend(i for i in n.input if g.constant(i) is None)
        frontier = nxt
    return False


def transformer_selection(model: onnx.ModelProto, keep_float: tuple[str, ...] = (),
                          patterns: TransformerPatterns | None = None) -> Selection:
    """A Selection (lowbit.plan.selection) for `model`: linear layers in integers (inputs and weights
    quantized, outputs float); everything else in float with its reason. `keep_float` holds glob
    patterns over node names, or `role:ffn_down`-style role names, kept in float."""
    g = GraphIndex(model)
    p = patterns or find_patterns(model)
    sel = Selection()
    for node in g.graph.node:
        role = p.role_of(node.name)
        if role == "linear":
            pat = next((k for k in keep_float if fnmatch.fnmatchcase(node.name, k)
                        or k == f"role:{p.linear_role[node.name]}"), None)
            if pat:
                sel.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32",
                                                f"kept in float by keep_float pattern '{pat}'")
                continue
            sel.nodes[node.name] = NodePlan(node.name, node.op_type, "int8",
                                            f"integer kernel ({p.linear_role[node.name]}): uint8 input, "
                                            "int8 weights, float output")
            sel.activations.append(node.input[0])
        else:
            reason = FLOAT_REASONS.get(role or "", "not a linear layer: runs in float")
            sel.nodes[node.name] = NodePlan(node.name, node.op_type, "fp32", reason)
    sel.activations = list(dict.fromkeys(sel.activations))
    sel.observed = [o for o in g.graph_outputs if g.is_float(o)]
    return sel
