"""Hostile and corrupt program files for the safety tests.

Each hostile ``.pt2`` is a real program with one part replaced by something that runs code
when a naive loader reads it: the code creates a marker file, so a test sees whether it ran.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch


class WriteMarker:
    """Unpickling it creates the marker file (a stand-in for any code an attacker chooses)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rewrite_pt2(data: bytes, change: Callable[[dict[str, bytes]], None]) -> bytes:
    """The archive with its records (names under the top folder) edited by ``change``."""
    source = zipfile.ZipFile(io.BytesIO(data))
    root = source.namelist()[0].split("/")[0] + "/"
    records = {info.filename[len(root) :]: source.read(info) for info in source.infolist()}
    change(records)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name, content in records.items():
            target.writestr(root + name, content)
    return out.getvalue()


def _edit_json(records: dict[str, bytes], name: str, edit: Callable[[dict], None]) -> None:
    value = json.loads(records[name])
    edit(value)
    records[name] = json.dumps(value).encode()


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close() is None"


def hostile_pt2s(benign: bytes, marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (a hostile variant of the ``benign`` archive, what pt2q's refusal must name)."""

    def sample_inputs(records: dict[str, bytes]) -> None:
        buffer = io.BytesIO()
        torch.save(((WriteMarker(marker),), {}), buffer)
        records["data/sample_inputs/model.pt"] = buffer.getvalue()

    def pickled_weight(records: dict[str, bytes]) -> None:
        def edit(config: dict) -> None:
            fqn, payload = next(iter(config["config"].items()))
            payload["use_pickle"] = True
            buffer = io.BytesIO()
            torch.save(WriteMarker(marker), buffer)
            records["data/weights/" + payload["path_name"]] = buffer.getvalue()

        _edit_json(records, "data/weights/model_weights_config.json", edit)

    def script_object(records: dict[str, bytes]) -> None:
        def edit(config: dict) -> None:
            config["config"]["evil"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }

        _edit_json(records, "data/constants/model_constants_config.json", edit)
        records["data/constants/opaque_obj_0"] = pickle.dumps(WriteMarker(marker))

    def aoti_library(records: dict[str, bytes]) -> None:
        records["data/aotinductor/model/model.so"] = b"\x7fELF not really"

    def shape_expression(records: dict[str, bytes]) -> None:
        def edit(model: dict) -> None:
            graph = model["graph_module"]["graph"]
            name = graph["inputs"][0]["as_tensor"]["name"]
            graph["tensor_values"][name]["sizes"][0] = {
                "as_expr": {"expr_str": f"1 + 0*({_code(marker)})", "hint": {"as_int": 1}}
            }

        _edit_json(records, "models/model.json", edit)

    def guard(records: dict[str, bytes]) -> None:
        _edit_json(records, "models/model.json", lambda model: model.update(guards_code=[_code(marker)]))

    def python_call(records: dict[str, bytes]) -> None:
        def edit(model: dict) -> None:
            node = next(n for n in model["graph_module"]["graph"]["nodes"] if n["target"].startswith("torch.ops.aten."))
            node["target"] = "torch.os.getpid"  # torch's verifier rejects it too; pt2q checks every target itself

        _edit_json(records, "models/model.json", edit)

    cases = {
        "sample inputs pickle": (sample_inputs, "data/sample_inputs/model.pt"),
        "pickled weight": (pickled_weight, "data/weights/weight_"),
        "script object": (script_object, "opaque_obj_0"),
        "AOTInductor library": (aoti_library, "data/aotinductor/model/model.so"),
        "shape expression": (shape_expression, "the shape expression"),
        "guard": (guard, "the guard"),
        "non-operator call": (python_call, "getpid"),
    }
    return {name: (rewrite_pt2(benign, change), names) for name, (change, names) in cases.items()}
