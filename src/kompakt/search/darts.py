"""`search`: first-order DARTS with an optional Dirichlet prior and a parameter-count penalty.

Bilevel optimisation, alternating per step: structure gamma on a validation batch, then weights
on a training batch (first-order: the weight step's effect on the validation loss is ignored).
Structural prior (Taranov, Bakhteev & Strijov): lambda * sum_edges -log Dir(softmax(gamma) |
alpha) with alpha < 1, which pushes each edge's mixture towards one-hot. Size penalty: mu *
expected parameters of the cell (softmax-weighted), relative to the largest candidate, so the
search trades accuracy for size. Discretisation keeps argmax per edge and drops zero edges.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from kompakt.data import load_dataset
from kompakt.errors import CheckpointError, ConfigError
from kompakt.models.checkpoint import make_checkpoint, save_checkpoint
from kompakt.options import opt
from kompakt.progress import progress
from kompakt.search.space import SearchedNet, SuperNet
from kompakt.train.trainer import evaluate


@dataclass(frozen=True)
class SearchConfig:
    """The options of `kompakt search`; field names are the CLI option names."""

    space: Literal["mlp", "conv"] = opt("mlp", "Search space of the cell's edges.")
    data: str = opt("digits", "A name from `kompakt data list`.")
    data_root: str | None = opt(None, "Directory for file-based datasets.")
    epochs: int = opt(10, "Search epochs.")
    out: str = opt("runs/search", "Output directory.", aliases=("-o",))
    width: int | None = opt(None, "Channels / features of the cell; default 64 (mlp), 16 (conv).")
    nodes: int | None = opt(None, "Nodes of the cell; default 3 (mlp), 2 (conv).")
    batch_size: int = opt(64, "Batch size.")
    lr: float | None = opt(
        None, "Learning rate of the weights; default 0.01 (0.001 for regression tasks)."
    )
    arch_lr: float = opt(3e-3, "Learning rate of the structure parameters.")
    prior: Literal["dirichlet", "none"] = opt("dirichlet", "Prior on the edge weights.")
    prior_weight: float = opt(0.01, "Weight of the prior (lambda).")
    alpha: float = opt(0.5, "Dirichlet concentration (< 1 favours one-hot edges).")
    size_penalty: float = opt(0.0, "Weight of the parameter-count penalty (mu).")
    seed: int = opt(0, "Seed.")
    resume: bool = opt(False, "Continue from OUT/search_state.pt (epochs: the new total).")
    quiet: bool = opt(False, "No progress output.")

    def __post_init__(self) -> None:
        if self.prior not in ("dirichlet", "none"):
            raise ConfigError(f"prior must be 'dirichlet' or 'none', got {self.prior!r}")
        conv = self.space == "conv"
        if self.width is None:
            object.__setattr__(self, "width", 16 if conv else 64)
        if self.nodes is None:
            object.__setattr__(self, "nodes", 2 if conv else 3)
        if self.epochs < 1 or self.nodes < 1 or self.width < 1 or self.batch_size < 1:
            raise ConfigError("epochs, nodes, width and batch_size must be >= 1")


def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.reshape(-1), y) if task == "regression" else F.cross_entropy(out, y)


def _param_costs(net: SuperNet) -> list[torch.Tensor]:
    """Per edge: each candidate's parameter count, relative to the largest candidate."""
    costs = []
    for edge in net.edges.values():
        counts = torch.tensor(
            [sum(p.numel() for p in op.parameters()) for op in edge.ops], dtype=torch.float32
        )
        costs.append(counts / counts.max().clamp_min(1))
    return costs


def structure_penalty(
    net: SuperNet, config: SearchConfig, costs: list[torch.Tensor]
) -> torch.Tensor:
    total = torch.zeros(())
    for edge, cost in zip(net.edges.values(), costs, strict=True):
        p = edge.weights()
        if config.prior == "dirichlet":
            total = total - config.prior_weight * ((config.alpha - 1) * torch.log(p + 1e-8)).sum()
        total = total + config.size_penalty * (p * cost).sum()
    return total


def bilevel_step(net, arch_opt, weight_opt, val_batch, train_batch, task, config, costs):
    """One first-order DARTS step: gamma on the validation batch, then weights on train."""
    arch_opt.zero_grad()
    val_loss = _loss(task, net(val_batch[0]), val_batch[1])
    (val_loss + structure_penalty(net, config, costs)).backward()
    arch_opt.step()
    weight_opt.zero_grad()
    train_loss = _loss(task, net(train_batch[0]), train_batch[1])
    train_loss.backward()
    weight_opt.step()
    return val_loss.item(), train_loss.item()


def search(config: SearchConfig) -> dict:
    """Run the search; writes searched.pt (the plain model), genotype.json and history.json."""
    torch.manual_seed(config.seed)
    data = load_dataset(config.data, root=config.data_root)
    info = data.info
    c, h, _ = info.input_shape
    net = SuperNet(config.space, info.num_classes, c, h, config.width, config.nodes)
    lr = config.lr or (0.001 if info.task == "regression" else 0.01)
    weights = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    arch = torch.optim.Adam(net.structure_parameters(), lr=config.arch_lr, betas=(0.5, 0.999))
    costs = _param_costs(net)
    x_train, y_train = data.split("train")
    x_val, y_val = data.split("val")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(config.seed)
    steps = math.ceil(len(x_train) / config.batch_size)
    start = time.perf_counter()
    history: list[dict] = []
    best = None  # (score, discretised model, epoch): the cell saved is the best on validation
    state_path = out / STATE_FILE
    start_epoch, spent = 0, 0.0
    if config.resume and state_path.is_file():
        state = _load_state(state_path)
        _check_resume(config, state["config"], state_path)
        net.load_state_dict(state["net"])
        weights.load_state_dict(state["weights_optimizer"])
        arch.load_state_dict(state["arch_optimizer"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, start_epoch, spent = state["history"], state["epoch"], state["elapsed_s"]
        if state["best"] is not None:
            saved = state["best"]
            model = SearchedNet(info.num_classes, c, h, saved["genotype"])
            model.load_state_dict(saved["weights"])
            best = (saved["score"], model, saved["epoch"])
    if start_epoch >= config.epochs:
        raise ConfigError(
            f"{state_path} has already searched {start_epoch} epochs; pass --epochs above that "
            "to continue"
        )
    start -= spent
    show = not config.quiet
    for epoch in range(start_epoch, config.epochs):
        order = torch.randperm(len(x_train), generator=gen)
        val_order = torch.randint(0, len(x_val), (steps, config.batch_size), generator=gen)
        desc = f"search {epoch + 1}/{config.epochs}"
        for step in progress(range(steps), desc=desc, quiet=not show):
            vi = val_order[step]
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            val_loss, train_loss = bilevel_step(
                net,
                arch,
                weights,
                (x_val[vi], y_val[vi]),
                (x_train[idx], y_train[idx]),
                info.task,
                config,
                costs,
            )
        # the discretised cell of this epoch, judged on the whole validation split
        candidate = SearchedNet(info.num_classes, c, h, net.genotype())
        _inherit_weights(net, candidate)
        val = evaluate(candidate, x_val, y_val, info.task)
        score = val["accuracy"] if "accuracy" in val else -val.get("rmse", val["loss"])
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "discretised_val": val,
                "genotype": candidate.genotype,
            }
        )
        if best is None or score > best[0]:
            best = (score, candidate, epoch + 1)
        _save_state(state_path, config, net, weights, arch, gen, history, best, start)
        if not config.quiet:
            elapsed = time.perf_counter() - start
            eta = elapsed / (epoch + 1) * (config.epochs - epoch - 1)
            edges = [(e["from"], e["to"], e["op"]) for e in candidate.genotype["edges"]]
            print(
                f"epoch {epoch + 1}/{config.epochs}: train {train_loss:.4f} val {val_loss:.4f} "
                f"discretised val {val} edges {edges} eta {eta:.0f} s",
                file=sys.stderr,
            )
    _, model, best_epoch = best
    genotype = model.genotype
    kwargs = {
        "num_classes": info.num_classes,
        "in_channels": c,
        "image_size": h,
        "genotype": genotype,
    }
    spec = {"name": "searched", "kwargs": kwargs, "layers": []}
    val = evaluate(model, x_val, y_val, info.task)
    ckpt = make_checkpoint(
        model,
        spec,
        {**info.to_dict(), "root": config.data_root},
        {"val": val},
        {"search": _jsonable(asdict(config))},
    )
    save_checkpoint(ckpt, out / "searched.pt")
    weights_by_edge = {
        k: dict(zip(e.names, e.weights().tolist(), strict=True)) for k, e in net.edges.items()
    }
    (out / "genotype.json").write_text(
        json.dumps({"genotype": genotype, "edge_weights": weights_by_edge}, indent=2)
    )
    (out / "history.json").write_text(json.dumps(history, indent=2))
    return {
        "out": str(out),
        "searched": str(out / "searched.pt"),
        "genotype": genotype,
        "params": sum(p.numel() for p in model.parameters()),
        "val": val,
        "best_epoch": best_epoch,
        "search_seconds": round(time.perf_counter() - start, 1),
    }


STATE_FILE = "search_state.pt"
# options that define the search; a resume may change only epochs, out, quiet
RESUME_FREE = ("epochs", "out", "quiet", "resume")


def _save_state(path, config, net, weights, arch, gen, history, best, start) -> None:
    """Everything a resumed search needs to continue bit for bit, written atomically."""
    score, model, epoch = best
    state = {
        "config": _jsonable(asdict(config)),
        "epoch": len(history),
        "net": net.state_dict(),
        "weights_optimizer": weights.state_dict(),
        "arch_optimizer": arch.state_dict(),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "best": {
            "score": score,
            "genotype": model.genotype,
            "weights": model.state_dict(),
            "epoch": epoch,
        },
        "elapsed_s": time.perf_counter() - start,
    }
    save_checkpoint(state, path)


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable search state ({type(error).__name__}); delete it to start "
            "the search again"
        ) from None
    if not isinstance(state, dict) or "net" not in state or "history" not in state:
        raise CheckpointError(f"{path} is not a kompakt search state; delete it to start again")
    return state


def _check_resume(config: SearchConfig, saved: dict, path: Path) -> None:
    now = _jsonable(asdict(config))
    differences = [
        f"{key}: {saved.get(key)!r} -> {value!r}"
        for key, value in now.items()
        if key not in RESUME_FREE and saved.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"--resume from {path} with other options than the search used ("
            + "; ".join(differences)
            + "); drop them, or search into another --out"
        )


def _inherit_weights(net: SuperNet, model: SearchedNet) -> None:
    """The plain model starts from the supernet's weights of the chosen primitives."""
    model.stem.load_state_dict(net.stem.state_dict())
    model.head.load_state_dict(net.head.state_dict())
    for edge in model.genotype["edges"]:
        key = f"{edge['from']}_{edge['to']}"
        mixed = net.edges[key]
        chosen = mixed.ops[mixed.names.index(edge["op"])]
        model.edges[key].load_state_dict(chosen.state_dict())


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value, default=str))
