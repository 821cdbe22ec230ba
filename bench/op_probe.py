"""Where a bert-base fp16 layer's time goes in ONNX Runtime: each op of the fused graph alone, at one batch's shape.

    python bench/op_probe.py --device cuda --shapes 2048x16,256x128 --graph /tmp/random-bert/onnx-cola/model.fp16.onnx

bench/model_stage.py's fixed shapes give the whole fp16 graph's rate (1.65-2.2M tokens/s on an H100 in run 2, where
the card's matrix units allow about 4.5M): this splits it. Each op of a fused BERT layer (the Attention op, with its
QKV projection; the attention output's and both feed-forward MatMuls; BiasGelu; SkipLayerNormalization) runs alone
as a one-node fp16 graph at the shape each rows x width batch gives it, inputs and output on the device (IO binding),
median of --repeat runs; torch.matmul at the same shapes beside the MatMuls (cuBLAS through PyTorch: is ORT's matrix
product as fast?). Per op: ms, and TFLOP/s or GB/s; per layer: the ops' sum, times 12 layers, as tokens/s, against
the whole graph at the same shape (--graph) so that what the ops do not explain shows. Writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from common import bench_session, bound_median, machine, write_json
from model_stage import chosen_options, fixed_shape
from onnx import TensorProto, helper, numpy_helper

from scorer.inference.session import onnxruntime
from scorer.manifest import load_manifest

HIDDEN, INTERMEDIATE, HEADS, LAYERS = 768, 3072, 12, 12


def op_graphs(rows: int, width: int) -> dict[str, tuple[bytes, dict[str, tuple], float, float]]:
    """Each op as a one-node fp16 graph: name -> (model, input shapes, FLOP, bytes moved)."""
    tokens, rng = rows * width, np.random.default_rng(0)

    def weight(name: str, *shape: int):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float16), name)

    def model(node, inputs: dict[str, tuple], initializers, output_shape) -> bytes:
        values = [helper.make_tensor_value_info(name, TensorProto.INT32 if name == "mask_index" else
                                                TensorProto.FLOAT16, list(shape)) for name, shape in inputs.items()]
        graph = helper.make_graph([node], node.op_type, values, [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT16, list(output_shape))], initializers)
        # IR version 8, opset 17's: make_model would write the installed onnx's newest (onnx 1.23: 14), which an
        # older ONNX Runtime refuses (1.31: at most 13, as on the GPU test machine).
        return helper.make_model(graph, ir_version=8, opset_imports=[
            helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]).SerializeToString()

    graphs = {}
    for name, (k, n) in {"attention output MatMul": (HIDDEN, HIDDEN), "feed-forward in MatMul": (HIDDEN, INTERMEDIATE),
                         "feed-forward out MatMul": (INTERMEDIATE, HIDDEN)}.items():
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        graphs[name] = (model(node, {"x": (tokens, k)}, [weight("w", k, n)], (tokens, n)), {"x": (tokens, k)},
                        2.0 * tokens * k * n, 2.0 * (tokens * (k + n) + k * n))
    node = helper.make_node("Attention", ["x", "w", "b", "mask_index"], ["y"], domain="com.microsoft", num_heads=HEADS)
    shapes = {"x": (rows, width, HIDDEN), "mask_index": (rows,)}
    graphs["Attention (with its QKV projection)"] = (
        model(node, shapes, [weight("w", HIDDEN, 3 * HIDDEN), weight("b", 3 * HIDDEN)], (rows, width, HIDDEN)),
        shapes, 2.0 * tokens * HIDDEN * 3 * HIDDEN + 4.0 * rows * width * width * HIDDEN, 2.0 * tokens * HIDDEN * 5)
    node = helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")
    graphs["BiasGelu"] = (model(node, {"x": (tokens, INTERMEDIATE)}, [weight("b", INTERMEDIATE)],
                                (tokens, INTERMEDIATE)), {"x": (tokens, INTERMEDIATE)}, 0.0,
                          2.0 * 2 * tokens * INTERMEDIATE)
    node = helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], ["y"],
                            domain="com.microsoft", epsilon=1e-12)
    shapes = {"x": (rows, width, HIDDEN), "skip": (rows, width, HIDDEN)}
    graphs["SkipLayerNormalization"] = (
        model(node, shapes, [weight(n, HIDDEN) for n in ("gamma", "beta", "bias")], (rows, width, HIDDEN)), shapes,
        0.0, 2.0 * 3 * tokens * HIDDEN)
    return graphs


# How often each op runs in one fused BERT layer.
PER_LAYER = {"Attention (with its QKV projection)": 1, "attention output MatMul": 1, "SkipLayerNormalization": 2,
             "feed-forward in MatMul": 1, "BiasGelu": 1, "feed-forward out MatMul": 1}


def torch_matmul_median(tokens: int, k: int, n: int, device: str, repeat: int) -> float:
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32  # fp16 matrix products crawl on a CPU
    x, w = torch.randn(tokens, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeat + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(x, w)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times[3:])


def probe(rows: int, width: int, device: str, repeat: int, graph: Path | None) -> dict:
    """One shape: each op's time and rate, the layers' sum, and the whole graph's time where given."""
    tokens, rng = rows * width, np.random.default_rng(1)
    result, layer_seconds = {"rows": rows, "width": width, "ops": {}}, 0.0
    for name, (model, shapes, flop, moved) in op_graphs(rows, width).items():
        feeds = {key: (np.full(shape, width, np.int32) if key == "mask_index" else
                       rng.standard_normal(shape).astype(np.float16)) for key, shape in shapes.items()}
        seconds = bound_median(bench_session(model, device), feeds, device, repeat)
        row = {"ms": seconds * 1e3, "tflop_per_s": flop / seconds / 1e12, "gb_per_s": moved / seconds / 1e9}
        if name.endswith("MatMul"):
            k, n = shapes["x"][1], {"attention output MatMul": HIDDEN, "feed-forward in MatMul": INTERMEDIATE,
                                    "feed-forward out MatMul": HIDDEN}[name]
            row["torch_ms"] = torch_matmul_median(tokens, k, n, device, repeat) * 1e3
        result["ops"][name] = row
        layer_seconds += PER_LAYER[name] * seconds
        print(f"{rows}x{width} {name:38} {row['ms']:8.3f} ms {row['tflop_per_s']:7.1f} TFLOP/s "
              f"{row['gb_per_s']:8.1f} GB/s" + (f"   torch.matmul {row['torch_ms']:.3f} ms" if "torch_ms" in row
                                                else ""), flush=True)
    result["layers_ms"] = LAYERS * layer_seconds * 1e3
    result["layers_tokens_per_s"] = tokens / (LAYERS * layer_seconds)
    print(f"{rows}x{width} {LAYERS} layers of these ops: {result['layers_ms']:.2f} ms, "
          f"{result['layers_tokens_per_s']:,.0f} tokens/s", flush=True)
    if graph:
        # as bench/model_stage.py times it, with the CUDA options export chose for it
        seconds = fixed_shape(graph, device, rows, width, False, chosen_options(device, load_manifest(graph.parent)),
                              repeats=repeat)
        result["whole_graph"] = {"path": str(graph), "ms": seconds * 1e3, "tokens_per_s": tokens / seconds,
                                 "ops_share": LAYERS * layer_seconds / seconds}
        print(f"{rows}x{width} the whole graph: {seconds * 1e3:.2f} ms, {tokens / seconds:,.0f} tokens/s; the "
              f"layers' ops {LAYERS * layer_seconds / seconds:.0%} of it", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--shapes", default="2048x16,256x128", help="Batch shapes, rows x width (32k tokens each: a "
                        "CoLA-like batch and a long-text one).")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--graph", type=Path, help="The whole fp16 graph, timed at the same shapes.")
    parser.add_argument("--out", type=Path, default=Path("bench/out/op-probe.json"))
    args = parser.parse_args()
    if args.device == "cuda":
        import torch

        torch.cuda.init()  # CUDA's libraries for onnxruntime-gpu come with torch (../shared/device/README.md)
        onnxruntime().preload_dlls()
    results = {"machine": machine(args.device), "shapes": []}
    for shape in args.shapes.split(","):
        rows, width = map(int, shape.split("x"))
        results["shapes"].append(probe(rows, width, args.device, args.repeat, args.graph))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
