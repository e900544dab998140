"""Parity: ONNX Runtime running the emitted integer model vs lowbit's simulation of the plan.

Measured teacher-forced: every layer of the simulation is fed the integers ONNX Runtime itself
computed for that layer's inputs, and its integer output is compared with ONNX Runtime's. The
contract is that ONNX Runtime's kernels compute what the plan prescribes to within one
quantization step, at every quantized tensor and at every model output (one step of the
output's own calibrated range on an 8-bit grid).

The free-running comparison (simulation fed only the model input) is reported too. In deep
networks it drifts: ORT's kernels round a few values differently (fixed-point Add, requantization
order), and each one-step difference propagates; that drift is not an error of either side.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from lowbit.core.fidelity import aligned
from lowbit.data import Batch
from lowbit.emit.qdq import deployed_integer_outputs, emit_forced_simulation, emit_simulation
from lowbit.onnx.session import run_batch, session
from lowbit.plan.quant_plan import QuantPlan

PASS_FRACTION = 0.999


def output_step(rng: tuple[float, float]) -> float:
    lo, hi = min(rng[0], 0.0), max(rng[1], 0.0)
    return max((hi - lo) / 255.0, 1e-12)


def _with_integer_outputs(model: onnx.ModelProto, plan: QuantPlan, integers: dict[str, str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name, q in integers.items():
        elem = plan.tensors[name].qparams.dtype.onnx_type
        m.graph.output.append(onnx.helper.make_tensor_value_info(q, elem, None))
    return m


class _Tally:
    def __init__(self) -> None:
        self.within = 0
        self.count = 0
        self.worst = 0.0

    def add(self, steps: np.ndarray) -> None:
        self.within += int(np.sum(steps <= 1.0 + 1e-6))
        self.count += int(steps.size)
        self.worst = max(self.worst, float(steps.max()) if steps.size else 0.0)

    def result(self) -> dict:
        frac = self.within / self.count if self.count else 1.0
        return {"within_one_step": frac, "max_steps": self.worst, "elements": self.count}


def check_parity(deployed: bytes, float_model: onnx.ModelProto, plan: QuantPlan, data: Iterable[Batch],
                 max_batches: int = 16) -> dict:
    """{within_one_step, max_steps, elements, passed, layers, outputs, free_running}."""
    deployed_proto = onnx.load_from_string(deployed)
    acts = [n for n, t in plan.tensors.items() if t.role == "activation"]
    integers = deployed_integer_outputs(deployed_proto, acts)
    real = session(_with_integer_outputs(deployed_proto, plan, integers))
    forced_model, forced_names = emit_forced_simulation(float_model, plan)
    forced = session(forced_model, optimize=False)
    del forced_model
    free = session(emit_simulation(float_model, plan), optimize=False)
    outputs = [o.name for o in deployed_proto.graph.output]
    layers, outs, drift = _Tally(), _Tally(), _Tally()
    for i, batch in enumerate(data):
        if i >= max_batches:
            break
        got = dict(zip(outputs + acts, run_batch(real, batch, outputs + [integers[a] for a in acts])))
        feeds = dict(batch.feeds)
        feeds.update({forced_names[a][0]: got[a].astype(np.float32) for a in acts})
        sim_names = outputs + [forced_names[a][1] for a in acts]
        sim = dict(zip(outputs + acts, run_batch(forced, Batch(feeds, None, batch.source), sim_names)))
        # `aligned`: a value-dependent length (a decoder's Loop) may differ; the excess counts in full
        for a in acts:
            layers.add(np.abs(np.subtract(*aligned(got[a], sim[a]))))
        free_out = run_batch(free, batch, outputs)
        for k, name in enumerate(outputs):
            span = (float(np.min(sim[name])), float(np.max(sim[name]))) if np.size(sim[name]) else (0.0, 0.0)
            step = output_step(plan.observed.get(name, span))
            outs.add(np.abs(np.subtract(*aligned(got[name], sim[name]))) / step)
            drift.add(np.abs(np.subtract(*aligned(got[name], free_out[k]))) / step)
    total = _Tally()
    total.within, total.count = layers.within + outs.within, layers.count + outs.count
    total.worst = max(layers.worst, outs.worst)
    out = total.result()
    out["passed"] = out["within_one_step"] >= PASS_FRACTION and outs.result()["within_one_step"] >= PASS_FRACTION
    out["method"] = "teacher-forced: each layer simulated on ONNX Runtime's own integer inputs"
    out["layers"] = layers.result()
    out["outputs"] = outs.result()
    out["free_running"] = drift.result()
    return out
