"""QuantPlan -> QDQ ONNX (for ONNX Runtime's integer kernels) or -> a float simulation of it.

lowbit writes its own QDQ emitter instead of driving onnxruntime.quantization: the plan carries
exact per-tensor scales and, after learned rounding, weights already on their integer grid, which
ORT's quantizer would recompute from the float weights; and QDQ placement (folded Relu/Clip, shared
scales through passthrough ops) is what decides whether ORT can fuse whole groups.

Both outputs come from the same graph surgery, so the simulation is the plan's arithmetic and
nothing else: weights fake-quantized by lowbit.core in numpy, activations by explicit float ops
(Div, Round, Add, Clip, Sub, Mul) that mirror QuantizeLinear / DequantizeLinear.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.version_converter
from onnx import TensorProto, helper, numpy_helper

from lowbit.core.granularity import PerChannel, PerGroup
from lowbit.emit.blocks import quantize_block_inputs
from lowbit.emit.const_operands import quantize_constant_operands
from lowbit.emit.metadata import record_plan
from lowbit.emit.weight_storage import StoredInt8, stored_int8_nodes, weight_only_int8
from lowbit.errors import ModelError
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.names import Names
from lowbit.onnx.ops import RECURRENT_SLOTS, weight_slots
from lowbit.onnx.scopes import has_subgraphs, scopes, uses
from lowbit.plan.quant_plan import QuantPlan, TensorPlan

QDQ_MIN_OPSET = 13
# Suffixes of the tensors the emitter adds. Short on purpose: every Q/DQ node repeats them, and on
# MobileNetV2 long suffixes cost ~1% of the INT8 file.
SCALE, ZERO_POINT, INTEGERS = "_s", "_z", "_w8"
Q_OUT, DQ_OUT = "_q", "_dq"


def emit_qdq(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """The deployable QDQ model of `plan` applied to the prepared float `model`."""
    out = _Surgery(model, plan, simulate=False).run()
    record_plan(out, plan)
    return out


def emit_simulation(model: onnx.ModelProto, plan: QuantPlan, forced: bool = False) -> onnx.ModelProto:
    """A float model computing exactly what `plan` prescribes (fake quantization), for parity.

    With `forced`, every quantized activation T is read from an extra graph input `T__forced`
    (its integer values as float) instead of the simulation's own: each layer is then simulated
    on the very integers ONNX Runtime computed, and its own integer output is exposed as
    `T_fq_clip` for comparison (teacher forcing: one layer's rounding difference cannot snowball).
    """
    if forced:
        return emit_forced_simulation(model, plan)[0]
    return _Surgery(model, plan, simulate=True).run()


def emit_forced_simulation(model: onnx.ModelProto, plan: QuantPlan) -> tuple[onnx.ModelProto, dict[str, tuple[str, str]]]:
    """The teacher-forced simulation and, per quantized activation, the names of its forced input
    and of its integer output (`T__forced`, `T_fq_clip` unless the model already holds those names)."""
    surgery = _Surgery(model, plan, simulate=True, forced=True)
    out = surgery.run()
    for name, t in plan.tensors.items():
        if t.role == "activation" and name in surgery.forced_names:
            forced, integers = surgery.forced_names[name]
            out.graph.input.append(helper.make_tensor_value_info(forced, TensorProto.FLOAT, None))
            out.graph.output.append(helper.make_tensor_value_info(integers, TensorProto.FLOAT, None))
    return out, surgery.forced_names


def forced_input(name: str) -> str:
    return f"{name}__forced"


def sim_integer_output(name: str) -> str:
    return f"{name}_fq_clip"


def deployed_integer_output(name: str) -> str:
    """The integer tensor's name when the model held no tensor of that name (else see below)."""
    return f"{name}{Q_OUT}"


def deployed_integer_outputs(model: onnx.ModelProto, names: list[str]) -> dict[str, str]:
    """The integer tensor (QuantizeLinear output) of each quantized activation in an emitted model,
    found by structure: its name is `T_q` unless the model already held that name."""
    q_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return {a: q_of.get(a, deployed_integer_output(a)) for a in names}


def _all_nodes(nodes):
    """`nodes` and those of their If / Loop / Scan bodies (which may read outer tensors)."""
    for n in nodes:
        yield n
        for a in n.attribute:
            for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_nodes(body.node)


def _body_reads_to_dq(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Reads of main-graph tensors in `mapping` from inside If / Loop / Scan bodies read their
    replacement (`onnx.scopes.uses` resolves each read to the graph that defines the name)."""
    if not mapping or not has_subgraphs(model):
        return
    table = uses(scopes(model))
    main = id(model.graph)
    for name, dq in mapping.items():
        for scope, node, slot in table.get((main, name), []):
            if scope.parent is not None:
                node.input[slot] = dq


class _Surgery:
    def __init__(self, model: onnx.ModelProto, plan: QuantPlan, simulate: bool, forced: bool = False) -> None:
        self.src = model
        self.plan = plan
        self.simulate = simulate
        self.forced = forced
        self.m = onnx.ModelProto()
        self.m.CopyFrom(model)
        self.new_inits: list[TensorProto] = []
        self.narrowed_weights: set[str] = set()
        self.names = Names()  # seeded in run(), after the opset conversion
        self.forced_names: dict[str, tuple[str, str]] = {}  # activation -> (forced input, integer output)

    # --- helpers -------------------------------------------------------------------------
    def _const(self, name: str, value: np.ndarray, elem_type: int | None = None) -> str:
        name = self.names.fresh(name)
        if elem_type is not None and elem_type in (TensorProto.INT4, TensorProto.UINT4):
            t = helper.make_tensor(name, elem_type, value.shape, value.flatten().tolist())
        else:
            t = numpy_helper.from_array(np.asarray(value), name)
        self.new_inits.append(t)
        return name

    def _qparam_consts(self, t: TensorPlan, with_zero_point: bool = True) -> tuple[str, str, dict]:
        q = t.qparams
        scale = np.asarray(q.scale, dtype=np.float32)
        zp = np.asarray(q.zero_point).astype(q.dtype.storage)
        attrs: dict = {}
        if isinstance(q.granularity, PerChannel):
            attrs["axis"] = q.granularity.axis
        elif isinstance(q.granularity, PerGroup):
            attrs["axis"] = q.granularity.axis
            attrs["block_size"] = q.granularity.size
        s = self._const(f"{t.name}{SCALE}", scale)
        z = self._const(f"{t.name}{ZERO_POINT}", zp, q.dtype.onnx_type) if with_zero_point else ""
        return s, z, attrs

    # --- the surgery ---------------------------------------------------------------------
    def run(self) -> onnx.ModelProto:
        self._convert_opset()
        self.names = Names(self.m)
        g = self.m.graph
        self._fold_activations()
        index = GraphIndex(self.m)
        inits = {t.name: t for t in g.initializer}
        head: list[onnx.NodeProto] = []   # DQ of weights and Q/DQ of graph inputs
        after: dict[str, list[onnx.NodeProto]] = {}  # producer node name -> Q/DQ to insert after it
        rewired: dict[str, str] = {}      # (consumer name, tensor) handled below

        for name, t in self.plan.tensors.items():
            if t.role in ("weight", "bias"):
                if name not in inits:
                    continue  # plan from another model version: nothing to replace
                ops = {c.op_type for c in index.consumers.get(name, [])}
                head.extend(self._quantize_constant(t, inits[name], ops))
            else:
                nodes, dq_out = self._quantize_activation(t)
                producer = index.producer.get(name)
                (after.setdefault(producer.name, []) if producer is not None else head).extend(nodes)
                rewired[name] = dq_out

        head.extend(self._narrow_float_weights(index, inits))
        # float constants of quantized Add / Mul on a uint8 grid: ORT then fuses QLinearAdd / QLinearMul
        const_inits, const_nodes, const_inputs = quantize_constant_operands(
            index, inits, self.plan, set(rewired), self.names, self.simulate)
        self.new_inits.extend(const_inits)
        head.extend(const_nodes)
        replaced = {index.nodes[n].input[k] for n, k in const_inputs}
        keep_inits = [t for t in g.initializer if not (t.name in self.plan.tensors
                                                       and self.plan.tensors[t.name].role in ("weight", "bias"))
                      and t.name not in self.narrowed_weights]
        del g.initializer[:]
        g.initializer.extend(keep_inits + self.new_inits)
        quantized_weights = {n for n, t in self.plan.tensors.items() if t.role in ("weight", "bias")}
        inputs = [i for i in g.input if i.name not in quantized_weights]
        del g.input[:]
        g.input.extend(inputs)

        int_nodes = {n.name for n in self.plan.nodes.values() if n.precision.startswith("int")}
        # If / Loop / Scan bodies read outer tensors by name: behind a quantized producer they read
        # the DQ output too (a folded Relu's name now holds the producer's pre-activation values)
        read_dq = {name: dq for name, dq in rewired.items()
                   if index.producer.get(name) is None or index.producer[name].name in int_nodes}
        new_nodes = list(head)
        for node in g.node:
            for k, name in enumerate(node.input):
                if (node.name, k) in const_inputs:
                    node.input[k] = const_inputs[(node.name, k)]
                    continue
                if name not in rewired:
                    continue
                producer = index.producer.get(name)
                from_int = producer is None or producer.name in int_nodes
                # Behind a quantized producer every consumer reads the DQ output (so ORT can fuse the
                # producer with its Q); behind a float producer only quantized consumers do.
                if from_int or node.name in int_nodes:
                    node.input[k] = rewired[name]
            new_nodes.append(node)
            new_nodes.extend(after.get(node.name, []))
        _body_reads_to_dq(self.m, read_dq)
        if replaced:  # a constant no float node reads any more is not stored
            read = {i for n in _all_nodes(new_nodes) for i in n.input} | {o.name for o in g.output}
            kept = [t for t in g.initializer if t.name not in replaced or t.name in read]
            del g.initializer[:]
            g.initializer.extend(kept)
        if self.simulate:  # after the rewiring: a block layer's input may be a dequantized activation
            opset = next((i.version for i in self.m.opset_import if i.domain in ("", "ai.onnx")), QDQ_MIN_OPSET)
            block_inits, new_nodes = quantize_block_inputs(new_nodes, index, self.plan, opset, self.names)
            g.initializer.extend(block_inits)
        del g.node[:]
        g.node.extend(new_nodes)
        del g.value_info[:]  # shapes of the float graph; ONNX Runtime infers its own
        self._ensure_opset()
        return self.m

    def _narrow_float_weights(self, index: GraphIndex, inits: dict[str, TensorProto]) -> list[onnx.NodeProto]:
        """Weights of float layers stored narrower, computed in FP32 after a Cast (and Mul) that ONNX
        Runtime folds once at load time: 'fp16' layers store all their float constants in FP16 (half
        the bytes); 'w8' layers store their weight as symmetric INT8 with a scale per group
        (lowbit.emit.weight_storage; about a quarter), the bias stays FP32. Not DequantizeLinear: ORT does not fold DQ, which would then run per call."""
        nodes = []
        for plan_node in self.plan.nodes.values():
            if plan_node.precision not in ("fp16", "w8") or plan_node.name not in index.nodes:
                continue
            node = index.nodes[plan_node.name]
            slots = range(len(node.input))
            axis = 0
            if plan_node.precision == "w8" and node.op_type in RECURRENT_SLOTS:
                slots = [k for k in RECURRENT_SLOTS[node.op_type] if k < len(node.input)]
            elif plan_node.precision == "w8":
                w_idx, _, axis = weight_slots(node, index)
                slots = [] if w_idx is None else [w_idx]
            for k in slots:
                name = node.input[k]
                t = inits.get(name)
                if t is None or t.data_type != TensorProto.FLOAT or name in self.plan.tensors or name in self.narrowed_weights:
                    continue
                self.narrowed_weights.add(name)
                w = numpy_helper.to_array(t)
                stored = w.astype(np.float16) if plan_node.precision == "fp16" else weight_only_int8(w, axis)
                if self.simulate:
                    exact = stored.values() if isinstance(stored, StoredInt8) else stored.astype(np.float32)
                    self.new_inits.append(numpy_helper.from_array(exact.astype(np.float32), name))
                    continue
                if not isinstance(stored, StoredInt8):
                    f16 = self.names.fresh(f"{name}_f16")
                    self.new_inits.append(numpy_helper.from_array(stored, f16))
                    nodes.append(helper.make_node("Cast", [f16], [name], name=self.names.fresh(f"{name}_cast"),
                                                  to=TensorProto.FLOAT))
                else:
                    stored_inits, stored_nodes = stored_int8_nodes(name, stored, self.names)
                    self.new_inits.extend(stored_inits)
                    nodes.extend(stored_nodes)
        return nodes

    def _fold_activations(self) -> None:
        """Drop Relu/Clip nodes the plan folded: their producer now writes their output tensor."""
        if not self.plan.folded:
            return
        g = self.m.graph
        by_name = {n.name: n for n in g.node}
        for act_name, producer_name in self.plan.folded.items():
            act, producer = by_name.get(act_name), by_name.get(producer_name)
            if act is None or producer is None:
                continue
            producer.output[0] = act.output[0]
        kept = [n for n in g.node if n.name not in self.plan.folded]
        del g.node[:]
        g.node.extend(kept)

    def _quantize_constant(self, t: TensorPlan, init: TensorProto, consumer_ops: set[str]) -> list[onnx.NodeProto]:
        w = numpy_helper.to_array(init).astype(np.float32)
        q = t.qparams
        if self.simulate:
            self.new_inits.append(numpy_helper.from_array(q.fake_quantize(w).astype(np.float32), t.name))
            return []
        qw = q.quantize(w)
        qname = self._const(f"{t.name}{INTEGERS}", qw, q.dtype.onnx_type)
        # Zero points that are 0 by definition (int32 biases, signed symmetric Conv weights) are left
        # out: DequantizeLinear then takes 0, and the file is smaller by a byte or four per channel.
        # Gemm / MatMul weights keep theirs: ONNX Runtime fuses them into QGemm only with one.
        implicit_zero = t.role == "bias" or (q.dtype.signed and not np.any(np.asarray(q.zero_point))
                                             and consumer_ops == {"Conv"})
        s, z, attrs = self._qparam_consts(t, with_zero_point=not implicit_zero)
        casts = []
        if q.dtype.bits == 4 and not isinstance(q.granularity, PerGroup):
            # ONNX Runtime has no integer Conv/Gemm kernel for 4-bit weights: DQ(int4) -> float op would
            # run at a third of FP32's speed. A Cast to 8 bits of the same integers is constant-folded at
            # session start, so the file keeps 4-bit weights and the layer runs on the int8 kernel.
            int8_type = TensorProto.INT8 if q.dtype.signed else TensorProto.UINT8
            narrow = {name: self.names.fresh(f"{name}_8bit") for name in (qname, z) if name}
            for name, to in narrow.items():
                casts.append(helper.make_node("Cast", [name], [to], to=int8_type))
            qname, z = narrow[qname], narrow.get(z, z)
        inputs = [qname, s, z] if z else [qname, s]
        return casts + [helper.make_node("DequantizeLinear", inputs, [t.name], **attrs)]

    def _quantize_activation(self, t: TensorPlan) -> tuple[list[onnx.NodeProto], str]:
        name = t.name
        dq_out = self.names.fresh(f"{name}{DQ_OUT}")
        if not self.simulate:
            s, z, _ = self._qparam_consts(t)
            q_out = self.names.fresh(f"{name}{Q_OUT}")
            return [
                # unnamed: names are optional in ONNX, and these would only repeat their outputs'
                helper.make_node("QuantizeLinear", [name, s, z], [q_out]),
                helper.make_node("DequantizeLinear", [q_out, s, z], [dq_out]),
            ], dq_out
        # y = (clip(round(x / s) + zp, qmin, qmax) - zp) * s, all float32. round(x / s) is a whole
        # number, so adding zp, clipping and subtracting it again equals clipping to [qmin - zp,
        # qmax - zp] exactly: four passes over the tensor instead of six. The teacher-forced form
        # keeps the integers themselves (`T_fq_clip`), as ONNX Runtime's QuantizeLinear writes them.
        q = t.qparams
        qmin, qmax = q.dtype.bounds(q.narrow)
        p = f"{name}_fq"
        n = {k: self.names.fresh(f"{p}_{k}") for k in ("div", "round", "add", "clip", "sub")}
        zero_point = np.float32(np.asarray(q.zero_point).reshape(()))
        s = self._const(f"{p}_scale", np.asarray(q.scale, dtype=np.float32).reshape(()))
        nodes = [
            helper.make_node("Div", [name, s], [n["div"]], name=self.names.fresh(f"{p}_Div")),
            helper.make_node("Round", [n["div"]], [n["round"]], name=self.names.fresh(f"{p}_Round")),
        ]
        if not self.forced:
            lo = self._const(f"{p}_qmin", np.float32(qmin) - zero_point)
            hi = self._const(f"{p}_qmax", np.float32(qmax) - zero_point)
            return nodes + [
                helper.make_node("Clip", [n["round"], lo, hi], [n["clip"]], name=self.names.fresh(f"{p}_Clip")),
                helper.make_node("Mul", [n["clip"], s], [dq_out], name=self.names.fresh(f"{p}_Mul")),
            ], dq_out
        z = self._const(f"{p}_zp", np.asarray(zero_point).reshape(()))
        lo = self._const(f"{p}_qmin", np.float32(qmin))
        hi = self._const(f"{p}_qmax", np.float32(qmax))
        nodes += [
            helper.make_node("Add", [n["round"], z], [n["add"]], name=self.names.fresh(f"{p}_Add")),
            helper.make_node("Clip", [n["add"], lo, hi], [n["clip"]], name=self.names.fresh(f"{p}_Clip")),
        ]
        integers = self.names.fresh(forced_input(name))
        self.forced_names[name] = (integers, n["clip"])
        nodes += [
            helper.make_node("Sub", [integers, z], [n["sub"]], name=self.names.fresh(f"{p}_Sub")),
            helper.make_node("Mul", [n["sub"], s], [dq_out], name=self.names.fresh(f"{p}_Mul")),
        ]
        return nodes, dq_out

    def _needed_opset(self) -> int:
        if not self.simulate and any(t.qparams.dtype.bits == 4 or isinstance(t.qparams.granularity, PerGroup)
                                     for t in self.plan.tensors.values()):
            return 21  # int4 tensors and blocked DequantizeLinear
        return QDQ_MIN_OPSET

    def _convert_opset(self) -> None:
        """Raise the float graph to the opset its Q/DQ nodes need with ONNX's version converter: a bare
        version bump would leave ops whose signature changed in between (ReduceMean's axes moved from
        attribute to input at 18) invalid."""
        needed = self._needed_opset()
        current = next((imp.version for imp in self.m.opset_import if imp.domain in ("", "ai.onnx")), needed)
        if current >= needed:
            return
        try:
            converted = onnx.version_converter.convert_version(self.m, needed)
        except Exception as e:  # the converter's errors are C++ messages; name what was being done
            raise ModelError(f"4-bit weights need ONNX opset {needed}, and ONNX's version converter could not "
                             f"raise this model from opset {current}: {str(e).strip().splitlines()[0][:200]}. "
                             f"Export the model at opset {needed} or use 8-bit weights.") from None
        self.m = converted

    def _ensure_opset(self) -> None:
        needed = self._needed_opset()
        for imp in self.m.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version < needed:
                imp.version = needed
