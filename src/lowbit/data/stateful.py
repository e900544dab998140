"""Recurrent models run over sequences, chunk by chunk, each chunk fed the state the previous one
returned (`stateful={"state": "stateN"}`, CLI `--stateful state->stateN`).

A streaming model (Silero VAD: `input [B, 576]`, `state [2, B, 128]` -> `stateN`) only ever sees
states it computed itself; calibrating it on zero states observes ranges it never meets. So each
item of stateful data (a .npz file in a folder, an element of a list, a whole dict or file) is
one sequence: its inputs hold consecutive steps along their batch axes, its state inputs (if
given; zeros of the declared shape if not) the initial state. A state input with a batch axis
means the batch holds parallel streams, so each call takes one step; a state without one (an
LSTM's fixed `[1, 1, 128]` h) lets a call take `batch_size` steps.

Calibration hands the state outputs of its own run back to the source (`hand_back`), so the
carry costs no extra run; any other reader of the source gets its states from a run of the FP32
model. Evaluation carries one state per model (`StateCarry`): FP32 its own, each candidate its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from lowbit.data import Batch, FeedSource, InputSpec, as_feeds
from lowbit.data.axes import resolve_batch_axes
from lowbit.errors import ConfigError, DataError, did_you_mean
from lowbit.onnx.session import run_batch, session

log = logging.getLogger(__name__)


def parse_pairs(texts: Iterable[str]) -> dict[str, str]:
    """CLI values 'state->stateN' or 'h->hn,c->cn' as {input: output}; 'state=stateN' too (a
    shell takes an unquoted '>' for a redirection).

    >>> parse_pairs(["h->hn,c->cn", "state=stateN"])
    {'h': 'hn', 'c': 'cn', 'state': 'stateN'}
    """
    pairs: dict[str, str] = {}
    for text in texts:
        for part in text.split(","):
            arrow = "->" if "->" in part else "="
            name, sep, out = (p.strip() for p in part.partition(arrow))
            if not sep or not name or not out:
                raise ConfigError(f"--stateful takes INPUT->OUTPUT pairs (e.g. 'state->stateN', or 'h->hn,c->cn'); "
                                  f"got '{part.strip()}'.")
            if name in pairs:
                raise ConfigError(f"--stateful names the state input '{name}' twice.")
            pairs[name] = out
    return pairs


def _dims(v: onnx.ValueInfoProto) -> tuple[Any, ...] | None:
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


def check_pairs(model: onnx.ModelProto, specs: Sequence[InputSpec], pairs: Mapping[str, str]) -> None:
    """Every pair names a graph input and a graph output of the same element type, rank and fixed dims."""
    if not isinstance(pairs, Mapping) or not pairs:
        raise ConfigError(f"stateful must map state inputs to the outputs that carry them, e.g. "
                          f"{{'state': 'stateN'}}; got {pairs!r}.")
    inputs = {v.name: v for v in model.graph.input if v.name in {s.name for s in specs}}
    outputs = {v.name: v for v in model.graph.output}
    if len(set(pairs.values())) != len(pairs):
        raise ConfigError(f"stateful pairs {dict(pairs)} feed one output into two inputs; give each state its own output.")
    for name, out in pairs.items():
        if name not in inputs:
            raise ConfigError(f"stateful: '{name}' is no input of the model; its inputs are "
                              f"{', '.join(inputs)}.{did_you_mean(name, inputs)}")
        if out not in outputs:
            raise ConfigError(f"stateful: '{out}' (carrying '{name}') is no output of the model; its outputs are "
                              f"{', '.join(outputs)}.{did_you_mean(out, outputs)}")
        a, b = inputs[name], outputs[out]
        ta, tb = a.type.tensor_type.elem_type, b.type.tensor_type.elem_type
        if ta and tb and ta != tb:
            raise ConfigError(f"stateful: output '{out}' is {onnx.TensorProto.DataType.Name(tb)} but the state input "
                              f"'{name}' takes {onnx.TensorProto.DataType.Name(ta)}; pair outputs with inputs of their type.")
        da, db = _dims(a), _dims(b)
        if da is not None and db is not None and (
                len(da) != len(db) or any(x and y and x != y for x, y in zip(da, db))):
            raise ConfigError(f"stateful: output '{out}' has shape {_shape(db)} but the state input '{name}' takes "
                              f"{_shape(da)}; a state output must have its input's shape.")


def _shape(dims: tuple[Any, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def stateful_specs(specs: Sequence[InputSpec], pairs: Mapping[str, str], batch_size: int = 1
                   ) -> tuple[list[InputSpec], int]:
    """(specs for the data layer, steps per call). State inputs hold one initial state per
    sequence, so they have no batch axis there; left out of the data, they are zeros of the
    declared shape (the batch axis 1 stream). Steps per call: 1 where a state has a batch axis."""
    out, steps = [], batch_size
    for s in specs:
        if s.name not in pairs:
            out.append(s)
            continue
        default = None
        if s.shape is not None:
            dims = [d if isinstance(d, int) else 1 if i == s.batch_axis else None for i, d in enumerate(s.shape)]
            if None not in dims:
                default = np.zeros(dims, s.dtype)
        if s.batch_axis is not None:
            steps = 1  # the batch axis of the state holds parallel streams: one step each per call
        out.append(replace(s, batch_axis=None, default=default))
    return out, steps


class StateCarry:
    """One model's state along a sequence: feeds a batch with the state outputs of the previous
    chunk (the batch's own state at a sequence start)."""

    def __init__(self, pairs: Mapping[str, str]) -> None:
        self.pairs = dict(pairs)
        self.state: dict[str, np.ndarray] = {}

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        if batch.sequence_start is not False:
            self.state = {}
        return {**batch.feeds, **self.state}

    def keep(self, outputs: Mapping[str, np.ndarray], batch: Batch, feeds: Mapping[str, np.ndarray]) -> None:
        state = {}
        for name, out in self.pairs.items():
            value = np.asarray(outputs[out])
            if value.shape != feeds[name].shape:
                raise DataError(f"{batch.source}: the state output '{out}' has shape {value.shape}, but it feeds "
                                f"'{name}', which was fed {feeds[name].shape}; a state output must keep its "
                                "input's shape (check the --stateful pairs and the initial state).")
            state[name] = value.astype(feeds[name].dtype, copy=False)
        self.state = state


def run_carried(sess: Any, batch: Batch, names: list[str] | None, carry: StateCarry) -> tuple[list[np.ndarray], Batch]:
    """Run `batch` with `carry`'s state; the values of `names` (None: all outputs) and the batch as fed."""
    fed = Batch(carry.feeds(batch), batch.labels, batch.source, batch.rows, batch.sequence_start)
    wanted = [o.name for o in sess.get_outputs()] if names is None else list(names)
    extra = [o for o in carry.pairs.values() if o not in wanted]
    values = run_batch(sess, fed, wanted + extra)
    carry.keep(dict(zip(wanted + extra, values)), batch, fed.feeds)
    return values[: len(wanted)], fed


class StatefulSource(FeedSource):
    """Stateful data whose batches hold the state the FP32 `model` reached on the chunks before
    them. A reader that runs the float model itself gives its state outputs back (`hand_back`)
    and saves the source that run. Build one with `stateful_feeds`."""

    def __init__(self, feeds: FeedSource, model: onnx.ModelProto, pairs: Mapping[str, str]) -> None:
        # not FeedSource.__init__: everything but the carry is the wrapped source's
        self._feeds, self._model, self.pairs = feeds, model, dict(pairs)
        self._handed: dict[int, dict[str, np.ndarray]] = {}
        self._sess: Any = None

    specs = property(lambda self: self._feeds.specs)
    description = property(lambda self: self._feeds.description)
    skipped = property(lambda self: self._feeds.skipped)
    axes = property(lambda self: self._feeds.axes)
    sequences = property(lambda self: True)

    def __repr__(self) -> str:
        return f"StatefulSource({self._feeds!r}, {self.pairs})"

    def __len__(self) -> int:
        return len(self._feeds)

    @property
    def state_outputs(self) -> list[str]:
        return list(self.pairs.values())

    def hand_back(self, batch: Batch, outputs: Mapping[str, np.ndarray]) -> None:
        """The state outputs the FP32 model computed on `batch` (as this source yielded it)."""
        self._handed[id(batch)] = {k: outputs[k] for k in self.pairs.values()}

    def __iter__(self) -> Iterator[Batch]:
        carry = StateCarry(self.pairs)
        for batch in self._feeds:
            fed = Batch(carry.feeds(batch), batch.labels, batch.source, batch.rows, batch.sequence_start)
            yield fed
            outputs = self._handed.pop(id(fed), None)  # the reader is done with `fed` here
            if outputs is None:
                outputs = dict(zip(self.state_outputs, self._run(fed)))
            carry.keep(outputs, fed, fed.feeds)

    def _run(self, batch: Batch) -> list[np.ndarray]:
        if self._sess is None:
            self._sess = session(self._model)
        return run_batch(self._sess, batch, self.state_outputs)


def stateful_feeds(data: Any, model: onnx.ModelProto, specs: Sequence[InputSpec], pairs: Mapping[str, str],
                   *, batch_size: int = 1, **kw: Any) -> StatefulSource:
    """`data` read as sequences (one per item; see the module doc) with the state carried by `model`.

    >>> calib = stateful_feeds("utterances/", model, specs, {"state": "stateN"})  # doctest: +SKIP
    """
    check_pairs(model, specs, pairs)
    data_specs, steps = stateful_specs(specs, pairs, batch_size)
    if isinstance(data, StatefulSource):
        return data
    feeds = as_feeds(data, data_specs, batch_size=steps, sequences=True, **kw)
    log.info("stateful data %s: %d step(s) per call, state %s", feeds.description, steps,
             ", ".join(f"{k} <- {v}" for k, v in pairs.items()))
    return StatefulSource(feeds, model, pairs)


def model_feeds(data: Any, model: onnx.ModelProto, specs: Sequence[InputSpec], *,
                batch_axes: Mapping[str, int | None] | None = None, stateful: Mapping[str, str] | None = None,
                **kw: Any) -> FeedSource:
    """`data` for `model`: each input on its batch axis (`batch_axes` given, the rest inferred),
    as sequences with the state carried where `stateful` pairs state inputs with outputs.
    `kw` go to `as_feeds` (labels, preprocess, limit, skip_bad, batch_size)."""
    specs = resolve_batch_axes(specs, batch_axes) if batch_axes else list(specs)
    if stateful:
        return stateful_feeds(data, model, specs, stateful, **kw)
    return as_feeds(data, specs, **kw)


def check_data_options(model: onnx.ModelProto, specs: Sequence[InputSpec],
                       batch_axes: Mapping[str, int | None] | None, stateful: Mapping[str, str] | None) -> None:
    """`batch_axes` and `stateful` checked against the model before any work."""
    if batch_axes is not None:
        if not isinstance(batch_axes, Mapping):
            raise ConfigError(f"batch_axes must map input names to an axis or None, e.g. {{'state': 1}}; got {batch_axes!r}.")
        resolve_batch_axes(specs, batch_axes)
    if stateful is not None:
        check_pairs(model, specs, stateful)
