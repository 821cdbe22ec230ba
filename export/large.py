"""Models over ONNX's 2 GB for one file (XLM-R large, say): what the fp16 and int8 builds are given instead.

torch writes such a model's tensors beside its graph (export.onnx_graph), and its word embeddings make it that
large (XLM-R's 250k tokens). ONNX Runtime's optimiser and quantiser serialise the graphs they work on, which protobuf
cannot do over 2 GB, and hold them many times over in memory. So the fp16 build is given the graph with that table
held out (a small stand-in in its place, put back in fp16 after), and the int8 build a graph whose word table is
stored in fp16 (half the size; a Cast after its lookup), which fits one file and which int8's own calibration and
the parity gate then judge. Once built, both keep their weights beside them as the fp32 graph does
(`weights_beside`): ONNX Runtime maps such a file where it parses a graph that holds them (a 1.2 GB int8 graph
opened in 0.05 s instead of 3.3 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from scorer.errors import ModelError

ONE_FILE = 2**31  # protobuf's limit on one serialised graph


def held_out_graph(source: Path) -> tuple[str | onnx.ModelProto, dict[str, onnx.TensorProto]]:
    """What ORT's optimizer is given, and the table held out of it. A graph that holds its weights: its path. One
    whose weights lie beside it: loaded with its word table held out and a table of zeros in its place, a row longer
    than the other embedding tables, as the optimizer's embedding fusion checks."""
    graph = onnx.load(str(source), load_external_data=False)
    if not _weights_beside(graph):
        return str(source), {}
    held, tables = {}, _gathered_tables(graph)
    if tables:
        word, rows = tables[0], max((t.dims[0] for t in tables[1:]), default=0) + 1
        held[word.name] = onnx.TensorProto()
        held[word.name].CopyFrom(word)
        word.CopyFrom(numpy_helper.from_array(np.zeros((rows, word.dims[1]), np.float32), word.name))
    load_external_data_for_model(graph, str(source.parent))
    if graph.ByteSize() >= ONE_FILE:
        raise ModelError(f"{source}: its weights without its word embeddings are over ONNX's 2 GB for one graph; "
                         "its fp16 graph cannot be built")
    return graph, held


def restore_table(model: onnx.ModelProto, held: dict[str, onnx.TensorProto], source: Path) -> None:
    """Put the tables held_out_graph held out back in place of their stand-ins, in the type the stand-in was given
    (fp16 after the conversion)."""
    for name, table in held.items():
        stand_in = next((t for t in model.graph.initializer if t.name == name), None)
        if stand_in is None:
            raise ModelError(f"{source}: ONNX Runtime's optimizer renamed or dropped the table {name}; the fp16 graph "
                             "of a model over 2 GB cannot be built")
        dtype = np.float16 if stand_in.data_type == onnx.TensorProto.FLOAT16 else np.float32
        stand_in.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table, str(source.parent)).astype(dtype), name))
    if held and model.ByteSize() >= ONE_FILE:
        raise ModelError(f"{source}: its fp16 graph would be {model.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GB for "
                         "one graph; it cannot be built")


def one_file_graph(source: Path) -> onnx.ModelProto:
    """The graph the int8 quantiser starts from, with its weights: `source` itself where it holds them; else with
    its word table stored in fp16 and cast back to fp32 after the lookup, so that it fits one file."""
    graph = onnx.load(str(source), load_external_data=False)
    if not _weights_beside(graph):  # (then it was loaded whole)
        return graph
    tables = _gathered_tables(graph)
    if tables:
        word = tables[0]
        name, half = word.name, f"{word.name}_fp16"
        values = numpy_helper.to_array(word, str(source.parent)).astype(np.float16)
        word.CopyFrom(numpy_helper.from_array(values, half))
        nodes = []
        for node in graph.graph.node:
            nodes.append(node)
            if node.op_type == "Gather" and node.input[0] == name:
                node.input[0], output = half, node.output[0]
                node.output[0] = f"{output}_fp16"
                nodes.append(onnx.helper.make_node("Cast", [node.output[0]], [output], to=onnx.TensorProto.FLOAT,
                                                   name=f"{node.name}_to_fp32"))
        del graph.graph.node[:]
        graph.graph.node.extend(nodes)
    load_external_data_for_model(graph, str(source.parent))
    if graph.ByteSize() >= ONE_FILE:
        raise ModelError(f"{source}: its weights with its word embeddings in fp16 are still over ONNX's 2 GB for one "
                         "graph; its int8 graph cannot be built (pass --variants fp32,fp16)")
    return graph


def data_file(path: Path) -> Path:
    """Where the tensors of the graph `path` lie when they lie beside it."""
    return path.with_name(f"{path.name}.data")


def weights_beside(path: Path) -> None:
    """Move the tensors of the graph `path` into its `data_file`, where they are not beside it already (an int8 graph
    that is the fp32 one)."""
    graph = onnx.load(str(path), load_external_data=False)
    if _weights_beside(graph):
        return
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_file(path).name, size_threshold=1024)


def _weights_beside(graph: onnx.ModelProto) -> bool:
    return any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in graph.graph.initializer)


def _gathered_tables(graph: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The 2-D tables only Gather nodes read (the embeddings), the largest (the words') first."""
    gathered = {node.input[0] for node in graph.graph.node if node.op_type == "Gather"}
    others = {name for node in graph.graph.node if node.op_type != "Gather" for name in node.input}
    return sorted((t for t in graph.graph.initializer if t.name in gathered - others and len(t.dims) == 2),
                  key=lambda t: t.dims[0] * t.dims[1], reverse=True)
