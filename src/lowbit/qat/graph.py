"""QATGraph: the prepared float ONNX graph of a plan as a trainable torch module with fake quantization.

Every quantized tensor of the plan gets a `FakeQuant` initialised from its TensorPlan: weights per
channel (the plan's grid, e.g. 7-bit on CPUs whose u8 x s8 kernels saturate, or 4-bit), activations
per tensor; passthrough tensors (MaxPool, Flatten, ...) share their source's quantizer as in the
plan; int32 biases are rounded to the accumulator grid (input step x weight step). Consumers read
the fake-quantized value exactly where the emitter rewires them to a DequantizeLinear, so the
module computes what the exported QDQ model computes.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import WEIGHTED_OPS, weight_slots
from lowbit.plan.quant_plan import QuantPlan
from lowbit.qat.fake_quant import FakeQuant, round_ste
from lowbit.qat.ops import OPS, run_op
from lowbit.errors import ModelError


def _key(name: str) -> str:
    """A tensor name as a torch attribute key (no dots)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)



def untrainable_ops(model: onnx.ModelProto) -> list[str]:
    """The operator types of `model`'s graph that have no torch version here (`lowbit.qat.ops`)."""
    return sorted({n.op_type for n in model.graph.node if n.op_type not in OPS})


class QATGraph(nn.Module):
    """The float graph `model` with the fake quantization `plan` prescribes; an ordinary nn.Module.

    Float weights and biases of Conv / Gemm / MatMul are parameters (`weights`); step sizes are
    parameters too when learned (LSQ) and buffers otherwise (`quantizers`). Call `to_plan()` /
    `lowbit.qat.export` to get the (float model, plan) pair back.
    """

    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, learn_scales: bool = True,
                 watch: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.proto = model
        self.plan = plan
        g = GraphIndex(model)
        unsupported = untrainable_ops(model)
        if unsupported:
            raise ModelError(f"QAT cannot train this graph: no torch version of {', '.join(unsupported)} "
                             f"(supported: {', '.join(sorted(OPS))}).")
        self.input_names = list(g.graph_inputs)
        self.output_names = list(g.graph_outputs)
        self.nodes = [(n.name, n.op_type, list(n.input), list(n.output),
                       {**{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}, "_n_out": len(n.output)})
                      for n in model.graph.node]

        trainable: set[str] = set()
        for n in model.graph.node:
            if n.op_type in WEIGHTED_OPS:
                w_idx, b_idx, _ = weight_slots(n, g)
                trainable |= {n.input[i] for i in (w_idx, b_idx) if i is not None}
        self.weights = nn.ParameterDict()
        self._const_keys: dict[str, str] = {}
        for t in model.graph.initializer:
            arr = numpy_helper.to_array(t)
            key = _key(t.name)
            self._const_keys[t.name] = key
            if t.name in trainable and arr.dtype == np.float32:
                self.weights[key] = nn.Parameter(torch.from_numpy(arr.copy()))
            else:
                self.register_buffer(f"const_{key}", torch.from_numpy(np.array(arr)), persistent=False)

        # one quantizer per activation / weight TensorPlan; shared tensors point at their root's
        self.quantizers = nn.ModuleDict()
        self._fq_of: dict[str, str] = {}
        for name, t in plan.tensors.items():
            if t.role == "bias":
                continue
            root = t.method.split(":", 1)[1] if (t.method or "").startswith("shared:") else name
            while (plan.tensors[root].method or "").startswith("shared:"):
                root = plan.tensors[root].method.split(":", 1)[1]
            if _key(root) not in self.quantizers:
                rt = plan.tensors[root]
                self.quantizers[_key(root)] = FakeQuant(rt.qparams, learn_scales, activation=rt.role == "activation")
            self._fq_of[name] = _key(root)
        # bias -> (input activation, weight): its grid is their steps' product
        self._bias_of: dict[str, tuple[str, str]] = {}
        for n in model.graph.node:
            if n.op_type in WEIGHTED_OPS:
                w_idx, b_idx, _ = weight_slots(n, g)
                if b_idx is not None and n.input[b_idx] in plan.tensors and n.input[0] in self._fq_of:
                    self._bias_of[n.input[b_idx]] = (n.input[0], n.input[w_idx])
        # which consumers read the fake-quantized value (as the emitter rewires them)
        int_nodes = {n.name for n in plan.quantized_nodes()}
        self._reads_fq: set[tuple[str, str]] = set()
        for n in model.graph.node:
            for name in n.input:
                if name not in self._fq_of or plan.tensors[name].role != "activation":
                    continue
                producer = g.producer.get(name)
                prod_name = plan.folded.get(producer.name, producer.name) if producer is not None else None
                if prod_name is None or prod_name in int_nodes or n.name in int_nodes:
                    self._reads_fq.add((n.name, name))
        # after node i, the values no later node reads are dropped (what autograd needs, it keeps itself)
        last: dict[str, int] = {}
        for i, (_, _, ins, _, _) in enumerate(self.nodes):
            for name in ins:
                last[name] = i
        self._free_after: list[list[str]] = [[] for _ in self.nodes]
        # `watch`: intermediate tensors whose float values each forward pass leaves in `watched`
        # (feature distillation reads them); like outputs, they are never dropped early
        self.watch = tuple(watch)
        self.watched: dict[str, torch.Tensor] = {}
        missing = sorted(set(self.watch) - {o for n in model.graph.node for o in n.output})
        if missing:
            raise ModelError(f"cannot watch {missing}: no node of the graph computes them.")
        for name, i in last.items():
            if name not in self.output_names and name not in self._const_keys and name not in self.watch:
                self._free_after[i].append(name)
        self.bn_folds = nn.ModuleDict()  # node key -> BatchStatFold (bn='batch')
        self.quantize_enabled = True

    # --- access ---------------------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        key = self._const_keys[name]
        return self.weights[key] if key in self.weights else getattr(self, f"const_{key}")

    def quantizer(self, name: str) -> FakeQuant | None:
        key = self._fq_of.get(name)
        return self.quantizers[key] if key is not None else None

    def quantize_weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """`w` (the value of weight `name`, possibly BN-folded) on its fake-quantized grid."""
        fq = self.quantizer(name)
        return fq(w) if fq is not None and self.quantize_enabled else w

    def quantize_bias(self, name: str | None, b: torch.Tensor | None) -> torch.Tensor | None:
        """An int32 bias rounded to its accumulator grid: input step x weight step (per channel)."""
        if name is None or b is None or name not in self._bias_of or not self.quantize_enabled:
            return b
        x_name, w_name = self._bias_of[name]
        step = (self.quantizer(x_name).scale.clamp_min(1e-12).reshape(()) *
                self.quantizer(w_name).scale.clamp_min(1e-12)).detach()
        return round_ste(b / step) * step

    def _const(self, name: str) -> torch.Tensor:
        t = self.tensor(name)
        return self.quantize_bias(name, t) if name in self._bias_of else self.quantize_weight(name, t)

    def add_bn_fold(self, node_name: str, fold: nn.Module) -> None:
        self.bn_folds[_key(node_name)] = fold

    def float_tensors(self) -> dict[str, np.ndarray]:
        """The trained float weights and biases by initializer name (BN folded in, running statistics)."""
        out = {name: self.tensor(name).detach().cpu().numpy() for name in self._const_keys
               if self._const_keys[name] in self.weights}
        with torch.no_grad():
            for fold in self.bn_folds.values():
                w, b = fold.folded(self)
                out[fold.weight_name] = w.cpu().numpy()
                if fold.bias_name:
                    out[fold.bias_name] = b.cpu().numpy()
        return out

    # --- forward --------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ModelError(f"the model takes {len(self.input_names)} inputs ({self.input_names}); "
                             f"got {len(inputs)}")
        env: dict[str, torch.Tensor] = {}
        fq_env: dict[str, torch.Tensor] = {}

        def store(name: str, value: torch.Tensor) -> None:
            env[name] = value
            fq = self.quantizer(name)
            if fq is not None and self.quantize_enabled and self.plan.tensors[name].role == "activation":
                fq_env[name] = fq(value)

        for name, value in zip(self.input_names, inputs):
            store(name, value)
        for i, (node_name, op_type, ins, outs, attrs) in enumerate(self.nodes):
            fold = self.bn_folds[_key(node_name)] if _key(node_name) in self.bn_folds else None
            args: list[torch.Tensor | None] = []
            for name in ins:
                if not name:
                    args.append(None)
                elif name in self._const_keys:
                    args.append(None if fold is not None else self._const(name))
                elif name in fq_env and (node_name, name) in self._reads_fq:
                    args.append(fq_env[name])
                else:
                    args.append(env[name])
            result = fold(self, args[0], attrs) if fold is not None else run_op(op_type, args, attrs)
            if isinstance(result, (tuple, list)):  # Split and other multi-output ops
                for name, value in zip(outs, result):
                    store(name, value)
            else:
                store(outs[0], result)
            del args
            for name in self._free_after[i]:
                env.pop(name, None)
                fq_env.pop(name, None)
        self.watched = {name: env[name] for name in self.watch}
        outputs = tuple(env[o] for o in self.output_names)  # graph outputs stay float (observed only)
        return outputs[0] if len(outputs) == 1 else outputs
