"""Layers of a mixed plan kept in float where the measured INT8 error says so.

Static INT8 with per-tensor activations loses a recognizer's strings a little everywhere and a lot in
a few places: a layer whose weights or heavy-tailed activations (a Hardswish chain quantized after
every step, a head whose logits decide the string) inject most of the noise. Which layers those are
is measured, not guessed from names or positions:

1. units: each INT8 layer with constant weights, with the non-weighted nodes after it up to the
   next weighted layers (its bias add, activation, affine), which share its fate;
2. one probe pass on a few calibration inputs runs FP32 and the INT8 simulation side by side and
   reads, at each unit's input and exits, the noise-to-signal ratio of what the next nodes read;
   a unit's score is how much that ratio grows across it (the error it injects or amplifies);
3. greedy trials, most injecting first, at most MAX_TRIALS and within FLOAT_BUDGET of the layer
   weights: the unit goes float (FP16 weights, float arithmetic) and stays so when the simulated
   output is more than MARGIN_DB closer to FP32 than the best plan so far, and closer with
   CONFIDENCE over the inputs (paired bootstrap): on PP-OCRv4 rec's probabilities neighbouring
   trials swing by 2-3 dB on 16 lines, and a unit kept on such a swing adds size for no real gain.

Each unit kept in float records its score and gain in its reason and in plan.config['float_choice'].
Calibration inputs only: the evaluation data never chooses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from lowbit.core.fidelity import decibels, paired_gain_db, sqnr_db, squared_error
from lowbit.data import Batch
from lowbit.emit.qdq import emit_simulation
from lowbit.metrics.output_error import OutputError, Outputs
from lowbit.onnx.graph import GraphIndex
from lowbit.onnx.ops import PASSTHROUGH_OPS, WEIGHTED_OPS, weight_slots
from lowbit.onnx.session import run_batch, session, with_outputs
from lowbit.plan.quant_plan import QuantPlan
from lowbit.search.mixed import mixed_plan

FLOAT_BUDGET = 0.10  # share of the layer weights that may move to FP16 (+2.5% of the FP32 file at most)
MAX_TRIALS = 6       # simulations after the probe: the time cost is bounded, not proportional to depth
MARGIN_DB = 0.3      # a trial must beat the best plan so far by this much on the calibration inputs
SAMPLES = 16
CONFIDENCE = 0.95   # of the gain's paired-bootstrap lower bound being above 0
REASON = ("kept in float (FP16 weights, float arithmetic): in the INT8 simulation the relative error grew "
          "{jump:.1f} dB across this layer on calibration inputs, and the plan with it in float was {gain:.1f} dB "
          "closer to FP32 at the output (plan config 'float_choice')")


@dataclass
class Unit:
    layer: str           # the weighted layer
    nodes: list[str]     # the layer and the INT8 elementwise nodes after it
    entry: str           # the layer's data input
    exits: list[str]     # tensors of the unit read outside it
    weights: int         # weight count of the layer


def find_units(model: onnx.ModelProto, plan: QuantPlan, g: GraphIndex | None = None) -> list[Unit]:
    """The INT8 weighted layers of `plan` (constant weights), each with the non-weighted nodes
    reachable from it without crossing another weighted layer (a node two layers reach belongs to
    the first), in graph order."""
    g = g or GraphIndex(model)
    claimed: set[str] = set()
    out = []
    for node in g.graph.node:
        p = plan.nodes.get(node.name)
        w_idx = weight_slots(node, g)[0] if node.op_type in WEIGHTED_OPS else None
        if p is None or p.precision != "int8" or w_idx is None or g.constant(node.input[w_idx]) is None:
            continue
        members, frontier = [node.name], list(node.output)
        while frontier:
            t = frontier.pop()
            for c in g.consumers.get(t, []):
                # through float steps too (a Div of a Hardswish): the INT8 nodes after them are
                # still this layer's epilogue
                if c.op_type not in WEIGHTED_OPS and c.name not in claimed and c.name not in members:
                    members.append(c.name)
                    frontier.extend(c.output)
        claimed.update(members)
        inside = set(members)
        exits = [o for m in members for o in g.nodes[m].output
                 if o in g.graph_outputs or any(c.name not in inside for c in g.consumers.get(o, []))]
        out.append(Unit(node.name, members, node.input[0], exits,
                        int(np.prod(g.constant(node.input[w_idx]).shape))))
    return out


def _as_read(name: str, value: np.ndarray, plan: QuantPlan) -> np.ndarray:
    """`value` as the next nodes read it: on the plan's grid where the tensor is quantized."""
    t = plan.tensors.get(name)
    return t.qparams.fake_quantize(value) if t is not None and t.role == "activation" else value


def error_jumps(model: onnx.ModelProto, plan: QuantPlan, units: list[Unit], batches: list[Batch]
                ) -> tuple[dict[str, float], list[list[np.ndarray]], np.ndarray]:
    """({layer: growth of the noise-to-signal ratio across its unit, in dB}, FP32 outputs per batch,
    the plan's output error per batch): one run of FP32 and one of the INT8 simulation per batch."""
    sim_model = emit_simulation(model, plan)
    present = {o for n in sim_model.graph.node for o in n.output} | {i.name for i in sim_model.graph.input}
    tensors = sorted({t for u in units for t in [u.entry, *u.exits] if t in present})
    outputs = [o.name for o in model.graph.output]
    noise = dict.fromkeys(tensors, 0.0)
    signal = dict.fromkeys(tensors, 0.0)
    refs, cands = [], []
    for m, keep in ((model, refs), (sim_model, cands)):
        sess = session(with_outputs(m, tensors), arena=False)
        names = [*outputs, *(t for t in tensors if t not in outputs)]
        for b in batches:
            keep.append(dict(zip(names, run_batch(sess, b, names))))
        del sess
    for ref, cand in zip(refs, cands):
        for t in tensors:
            r = ref[t].astype(np.float64)  # FP32 reads its own values
            noise[t] += squared_error(r, _as_read(t, cand[t], plan))
            signal[t] += float(np.sum(r * r))
    nsr = {t: noise[t] / signal[t] if signal[t] > 0 else 0.0 for t in tensors}
    jumps = {}
    for u in units:
        outs = [nsr[t] for t in u.exits if t in nsr]
        if outs and u.entry in nsr:
            jumps[u.layer] = float(decibels((max(outs) + 1e-12) / (nsr[u.entry] + 1e-12)))
    reference = [[r[o] for o in outputs] for r in refs]
    return jumps, reference, _errors(OutputError(reference), reference, [[c[o] for o in outputs] for c in cands])


def _errors(measure: OutputError, reference: list[Outputs], candidates: list[Outputs]) -> np.ndarray:
    return np.array([measure.error(r, c) for r, c in zip(reference, candidates)])


def choose_float_layers(model: onnx.ModelProto, plan: QuantPlan, calib: Iterable[Batch],
                        budget: float = FLOAT_BUDGET, trials: int = MAX_TRIALS, margin: float = MARGIN_DB,
                        samples: int = SAMPLES) -> tuple[QuantPlan, dict]:
    """(plan, record): `plan` with the units that measurably dominate its error in float (see module
    doc); `plan` itself when no trial clears the margin."""
    g = GraphIndex(model)
    units = find_units(model, plan, g)
    batches = list(itertools.islice(iter(calib), samples))
    if not units or not batches:
        return plan, {}
    jumps, reference, best_err = error_jumps(model, plan, units, batches)
    outputs = [o.name for o in model.graph.output]
    measure = OutputError(reference)
    signal = sum(measure.signal(r) for r in reference)
    base = sqnr_db(signal, best_err.sum())
    total = sum(u.weights for u in units) or 1
    by_layer = {u.layer: u for u in units}
    order = sorted(jumps, key=lambda n: -jumps[n])
    chosen: list[str] = []
    best, best_plan, used, tried = base, plan, 0, []
    for name in order:
        if len(tried) >= trials:
            break
        u = by_layer[name]
        if used + u.weights > budget * total:
            continue
        # data movement is left to mixed_plan: it follows its neighbours (a Reshape feeding an INT8 layer)
        precisions = {n: "fp32" for c in [*chosen, name] for n in by_layer[c].nodes
                      if g.nodes[n].op_type not in PASSTHROUGH_OPS}
        precisions.update({c: "fp16" for c in [*chosen, name]})
        cand = mixed_plan(model, plan, precisions, g)
        sess = session(emit_simulation(model, cand), arena=False)
        err = _errors(measure, reference, [run_batch(sess, b, outputs) for b in batches])
        del sess
        sqnr = sqnr_db(signal, err.sum())
        gain, low = paired_gain_db(best_err, err, 1.0 - CONFIDENCE, seed=len(tried))
        kept = gain > margin and low > 0.0
        tried.append({"layer": name, "nodes": u.nodes, "error_jump_db": round(jumps[name], 2),
                      "sqnr_db": round(sqnr, 3), "gain_lower_bound_db": round(low, 3), "kept": kept})
        if kept:
            tried[-1]["gain_db"] = round(gain, 3)
            best, best_err, best_plan = sqnr, err, cand
            chosen.append(name)
            used += u.weights
    record = {"criterion": "output SQNR of the simulated plan vs FP32 on calibration inputs, the gain above the margin "
                           f"and above 0 with {CONFIDENCE:.0%} confidence (paired bootstrap over inputs); candidates "
                           "ranked by the growth of the relative error across each layer in the INT8 simulation",
              "samples": len(batches), "budget_share": budget, "margin_db": margin, "confidence": CONFIDENCE, "base_sqnr_db": round(base, 3),
              "sqnr_db": round(best, 3), "weight_share": round(used / total, 4), "trials": tried,
              "layers": chosen}
    for c in tried:
        if c["kept"]:
            for n in c["nodes"]:  # the nodes this choice moved out of INT8
                if plan.nodes[n].precision == "int8" and best_plan.nodes[n].precision != "int8":
                    best_plan.nodes[n].reason = REASON.format(jump=c["error_jump_db"], gain=c["gain_db"])
    return best_plan, record
