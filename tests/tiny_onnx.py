"""A tiny linear ONNX model written byte by byte, to stand in for a YAHPO-Gym surrogate in tests.

``output = x_cont @ W_cont + float(x_cat) @ W_cat + bias``, with YAHPO's input names and dtypes
(``x_cat`` int32, ``x_cont`` float32, ``output`` float32). The ``onnx`` package is not a dependency,
so the protobuf is encoded here: only the handful of ModelProto fields this graph needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT, INT32 = 1, 6  # TensorProto.DataType


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint((field << 3) | 2) + _varint(len(data)) + data


def _tensor(name: str, array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype=np.float32)
    return b"".join(_int(1, d) for d in a.shape) + _int(2, FLOAT) + _bytes(8, name) + _bytes(9, a.tobytes())


def _value_info(name: str, elem_type: int, width: int) -> bytes:
    shape = _bytes(1, _bytes(2, "N")) + _bytes(1, _int(1, width))  # dims: N (symbolic) x width
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: list[str], outputs: list[str], attrs: bytes = b"") -> bytes:
    return b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs) + _bytes(4, op) + attrs


def write_linear_model(path: str | Path, w_cont: np.ndarray, w_cat: np.ndarray, bias: np.ndarray) -> Path:
    """Write the model; ``w_cont`` is (n_cont, n_out), ``w_cat`` (n_cat, n_out), ``bias`` (n_out,)."""
    n_cont, n_out = w_cont.shape
    n_cat = w_cat.shape[0]
    cast_to_float = _bytes(5, _bytes(1, "to") + _int(3, FLOAT) + _int(20, 2))  # AttributeProto INT
    nodes = [
        _node("Cast", ["x_cat"], ["cat_f"], cast_to_float),
        _node("MatMul", ["x_cont", "w_cont"], ["a"]),
        _node("MatMul", ["cat_f", "w_cat"], ["b"]),
        _node("Add", ["a", "b"], ["ab"]),
        _node("Add", ["ab", "bias"], ["output"]),
    ]
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "tiny")
        + _bytes(5, _tensor("w_cont", w_cont))
        + _bytes(5, _tensor("w_cat", w_cat))
        + _bytes(5, _tensor("bias", bias))
        + _bytes(11, _value_info("x_cat", INT32, n_cat))
        + _bytes(11, _value_info("x_cont", FLOAT, n_cont))
        + _bytes(12, _value_info("output", FLOAT, n_out))
    )
    model = _int(1, 7) + _bytes(2, "optuna-quicktune tests") + _bytes(7, graph) + _bytes(8, _bytes(1, "") + _int(2, 13))
    path = Path(path)
    path.write_bytes(model)
    return path


# ---------------------------------------------------------------------- a conditional YAHPO folder
TINY_CONT = ["eta", "depth", "drop_rate", "weight_cap", "trainsize", "replicate"]
TINY_CAT = ["task_id", "kind", "sample_type"]
TINY_Y = ["acc", "time"] + [f"echo.{n}" for n in TINY_CONT + TINY_CAT]  # echoes show what went in


def write_conditional_scenario(folder: str | Path, tasks: tuple[str, ...] = ("11", "22", "33", "44")) -> Path:
    """A YAHPO-format folder with a conditional space, a second fidelity-like input and the layout file.

    ``kind`` in {tree, linear, dart}: ``depth`` exists unless ``kind == linear`` (NE), ``drop_rate``
    and ``sample_type`` only for dart (EQ, IN), ``weight_cap`` only when ``sample_type == weighted``
    (a chain). ConfigSpace's alphabetical order puts children before ``kind``. ``replicate`` is held
    at 3 by ``yahpo.json``'s ``constants``. Besides ``acc`` and ``time`` the model echoes each input.
    """
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hps = [
        {"name": "depth", "type": "uniform_int", "lower": 1, "upper": 10, "log": False, "default": 6},
        {"name": "drop_rate", "type": "uniform_float", "lower": 0.0, "upper": 0.5, "log": False, "default": 0.1},
        {"name": "eta", "type": "uniform_float", "lower": 0.001, "upper": 1.0, "log": True, "default": 0.3},
        {"name": "kind", "type": "categorical", "choices": ["tree", "linear", "dart"], "default": "tree"},
        {"name": "replicate", "type": "uniform_int", "lower": 1, "upper": 10, "log": False, "default": 5},
        {"name": "sample_type", "type": "categorical", "choices": ["uniform", "weighted"], "default": "uniform"},
        {"name": "task_id", "type": "categorical", "choices": list(tasks), "default": tasks[0]},
        {"name": "trainsize", "type": "uniform_float", "lower": 0.1, "upper": 1.0, "log": False, "default": 0.5},
        {"name": "weight_cap", "type": "uniform_float", "lower": 0.0, "upper": 1.0, "log": False, "default": 0.5},
    ]
    conditions = [
        {"child": "depth", "parent": "kind", "type": "NE", "value": "linear"},
        {"child": "drop_rate", "parent": "kind", "type": "EQ", "value": "dart"},
        {"child": "sample_type", "parent": "kind", "type": "IN", "values": ["dart"]},
        {"child": "weight_cap", "parent": "sample_type", "type": "EQ", "value": "weighted"},
    ]
    (folder / "config_space.json").write_text(json.dumps(
        {"hyperparameters": hps, "conditions": conditions, "forbiddens": [], "json_format_version": 0.2}, indent=1))
    encoding = {
        "task_id": {"#na#": 0, **{t: i + 1 for i, t in enumerate(tasks)}},
        "kind": {"#na#": 0, "tree": 1, "linear": 2, "dart": 3},
        "sample_type": {"#na#": 0, "uniform": 1, "weighted": 2},
    }
    (folder / "encoding.json").write_text(json.dumps(encoding))
    (folder / "yahpo.json").write_text(json.dumps({
        "y_names": TINY_Y, "y_minimize": [False, True] + [False] * (len(TINY_Y) - 2),
        "cont_names": TINY_CONT, "cat_names": TINY_CAT, "instance_name": "task_id",
        "fidelity_param": "trainsize", "runtime_name": "time", "constants": {"replicate": 3},
    }, indent=1))
    n_out = len(TINY_Y)
    w_cont = np.zeros((len(TINY_CONT), n_out), dtype=np.float32)
    w_cat = np.zeros((len(TINY_CAT), n_out), dtype=np.float32)
    w_cont[:, 0] = [0.05, 0.02, -0.2, 0.05, 0.4, 0.001]  # acc
    w_cont[:, 1] = [0.0, 0.1, 0.0, 0.0, 2.0, 0.0]  # time (seconds)
    w_cat[:, 0] = [0.01, 0.05, 0.02]
    w_cat[:, 1] = [0.2, 0.0, 0.0]
    for j in range(len(TINY_CONT)):
        w_cont[j, 2 + j] = 1.0
    for j in range(len(TINY_CAT)):
        w_cat[j, 2 + len(TINY_CONT) + j] = 1.0
    bias = np.zeros(n_out, dtype=np.float32)
    bias[:2] = [0.2, 0.5]
    write_linear_model(folder / "model.onnx", w_cont, w_cat, bias)
    return folder
