"""Seed 004's experiment on boston (regression, RMSE) and mnist5k (accuracy).

For each dataset: search an MLP cell (first-order DARTS, Dirichlet prior), retrain the
discretised architecture from its inherited weights, and compare with a hand-designed MLP of
similar size trained for the same number of epochs. Reports the test metric, parameters and
search time. Writes benchmarks/results/search.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kompakt.runtime_bench.timing import save_results
from kompakt.search import SearchConfig, search
from kompakt.train import TrainConfig, fit

CASES = [
    # dataset, cell width, hand-designed baseline (one hidden layer of the cell's width: the
    # stem + head of the searched net), epochs to retrain both (boston has 354 training rows)
    ("boston", 32, [32], 200),
    ("mnist5k", 64, [64], 20),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--search-epochs", type=int, default=10)
    parser.add_argument("--work", default="runs/bench_search")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "search.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    rows = []
    for data, width, hidden, train_epochs in CASES:
        start = time.perf_counter()
        found = search(
            SearchConfig(
                space="mlp",
                data=data,
                epochs=args.search_epochs,
                width=width,
                nodes=3,
                out=str(work / data / "search"),
                quiet=True,
                lr=0.01 if data == "mnist5k" else 0.001,
            )
        )
        search_s = time.perf_counter() - start
        optimizer = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0}
        searched = fit(
            TrainConfig(
                init_from=found["searched"],
                data=data,
                quiet=True,
                epochs=train_epochs,
                out=str(work / data / "retrain"),
                **optimizer,
            )
        )
        baseline = fit(
            TrainConfig(
                model="mlp",
                data=data,
                quiet=True,
                epochs=train_epochs,
                out=str(work / data / "baseline"),
                model_kwargs={"hidden": hidden},
                **optimizer,
            )
        )
        metric = "rmse" if data == "boston" else "accuracy"
        for label, result in (("searched cell", searched), ("hand-designed MLP", baseline)):
            rows.append(
                {
                    "dataset": data,
                    "model": label,
                    "params": result["params"],
                    f"test_{metric}": round(result["test"][metric], 4),
                    "search_s": round(search_s, 1) if label == "searched cell" else None,
                    "genotype": found["genotype"] if label == "searched cell" else None,
                }
            )
    save_results(
        args.out,
        "search",
        {
            "search_epochs": args.search_epochs,
            "train_epochs": {case[0]: case[3] for case in CASES},
            "optimizer": "adam 1e-3 for retraining and baseline",
        },
        rows=rows,
    )
    for r in rows:
        metric = r.get("test_rmse", r.get("test_accuracy"))
        print(
            f"{r['dataset']:<8} {r['model']:<18} {r['params']:>8,} params  test "
            f"{'RMSE' if 'test_rmse' in r else 'top-1'} {metric:.4f}  search {r['search_s']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
