"""Where INT8 starts to pay for a MatMul on this CPU: int8 (portable Q/DQ) vs fp32 time of
`(4096, K) @ (K, 64)` in ONNX Runtime, one thread, interleaved, for K = 4 .. 256.

kompakt keeps MatMuls with an inner dimension below the crossover in float
(`kompakt.deploy.quantize.MIN_INT8_INNER_DIM`); TT chains are mostly such small-K MatMuls.
Writes benchmarks/results/int8_matmul_crossover.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kompakt.deploy import quantize
from kompakt.deploy.quantize import MIN_INT8_INNER_DIM
from kompakt.runtime_bench.timing import interleaved_medians, save_results


def matmul_model(inner: int, outer: int, path: Path) -> None:
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((inner, outer)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"], name="mm")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", inner])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outer])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "int8_matmul_crossover.json")
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for inner in (4, 8, 16, 32, 64, 128, 256):
            fp32, int8 = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
            matmul_model(inner, 64, fp32)
            x = np.random.default_rng(1).standard_normal((args.rows, inner)).astype(np.float32)
            # threshold 0: quantize this MatMul whatever its size (we are measuring that size)
            quantize.MIN_INT8_INNER_DIM = 0
            try:
                quantize.quantize_int8(fp32, int8, x[:256])
            finally:
                quantize.MIN_INT8_INNER_DIM = MIN_INT8_INNER_DIM
            sessions = {"fp32": session(fp32), "int8": session(int8)}
            med = interleaved_medians(
                {k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in sessions.items()},
                args.runs,
                5,
            )
            rows.append({"inner": inner, "int8_over_fp32": round(med["int8"] / med["fp32"], 3)})
            print(f"K={inner:4d}: int8 / fp32 time {rows[-1]['int8_over_fp32']:.2f}")
    save_results(
        args.out,
        "int8_matmul_crossover",
        {
            "rows": args.rows,
            "outer": 64,
            "threads": 1,
            "runs": args.runs,
            "kompakt_threshold": MIN_INT8_INNER_DIM,
        },
        rows=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
