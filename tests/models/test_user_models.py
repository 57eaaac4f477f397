"""Models users bring (issue 25): their own file or module as --model, their own weights as
--weights, through train / compress / export from the CLI, reloaded from anywhere."""

from __future__ import annotations

import textwrap

import pytest
import torch

from clirun import kompakt
from kompakt.errors import CheckpointError, ConfigError
from kompakt.models import build_model
from kompakt.models.checkpoint import load_checkpoint

NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        # a user's CNN: takes num_classes only (no image_size / in_channels parameters)
        def __init__(self, num_classes=10, hidden=64):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(1024, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
            )

        def forward(self, x):
            return self.head(self.features(x))


    def not_a_model(num_classes):
        return "surprise"
    """
)


@pytest.fixture
def user_files(tmp_path):
    """my_net.py and weights trained by the user's own 30-step loop on digits."""
    from kompakt.data import load_dataset

    (tmp_path / "my_net.py").write_text(NET)
    net = build_model(f"{tmp_path / 'my_net.py'}:Net", 10, 1, 8)
    x, y = load_dataset("digits").split("train")
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(30):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    return tmp_path


def test_a_users_file_and_weights_go_through_the_cli(user_files, tmp_path):
    model = f"{user_files / 'my_net.py'}:Net"
    adopted = kompakt(
        "train", "--model", model, "--data", "digits", "--weights", user_files / "weights.pt",
        "--epochs", "0", "--out", tmp_path / "mine",
    )  # fmt: skip
    assert adopted.returncode == 0, adopted.stderr
    assert "test loss" in adopted.stdout
    saved = load_checkpoint(tmp_path / "mine" / "best.pt")
    assert saved["model"]["name"] == model  # the source, absolute: reloads from any folder
    want = torch.load(user_files / "weights.pt")
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in want.items())
    compressed = kompakt(
        "compress", tmp_path / "mine" / "best.pt", "--ratio", "4", "--finetune-epochs", "1",
        "--calib-samples", "64", "-o", tmp_path / "small", "--quiet",
    )  # fmt: skip
    assert compressed.returncode == 0, compressed.stderr
    accuracy = float(compressed.stdout.split("accuracy=")[1].split(";")[0])
    assert accuracy > 0.5, compressed.stdout
    exported = kompakt("export", tmp_path / "small" / "best.pt", "-o", tmp_path / "small.onnx")
    assert exported.returncode == 0, exported.stderr


def test_user_model_sources_and_their_errors_are_one_line(user_files, tmp_path, monkeypatch):
    (tmp_path / "users_pkg_net.py").write_text(NET)  # an importable module of the user's
    monkeypatch.syspath_prepend(str(tmp_path))
    net = build_model("users_pkg_net:Net", 10, 1, 8)  # package.module:attr
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    for source, message in [
        (f"{tmp_path / 'nope.py'}:Net", "does not exist"),
        (f"{user_files / 'my_net.py'}:Missing", "has no callable"),
        (f"{user_files / 'my_net.py'}:not_a_model", "not an nn.Module"),
        ("no_such_module_anywhere:Net", "cannot import"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_model(source, 10, 1, 8)
    torch.save({"state_dict": {"wrong.weight": torch.zeros(3)}}, tmp_path / "bad.pt")
    proc = kompakt(
        "train", "--model", f"{user_files / 'my_net.py'}:Net", "--data", "digits",
        "--weights", tmp_path / "bad.pt", "--epochs", "0", "--out", tmp_path / "x",
    )  # fmt: skip
    assert proc.returncode == 1 and "do not fit the model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_weights_saved_by_ddp_or_as_a_whole_module_load(user_files, tmp_path):
    from kompakt.train.trainer import load_weights_

    source = f"{user_files / 'my_net.py'}:Net"
    net = build_model(source, 10, 1, 8)
    state = torch.load(user_files / "weights.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    load_weights_(net, str(tmp_path / "ddp.pt"))
    assert torch.equal(net.state_dict()["head.1.weight"], state["head.1.weight"])
    whole = build_model(source, 10, 1, 8)
    whole.load_state_dict(state)
    torch.save(whole, tmp_path / "whole.pt")
    other = build_model(source, 10, 1, 8)
    load_weights_(other, str(tmp_path / "whole.pt"))
    assert torch.equal(other.state_dict()["head.1.weight"], state["head.1.weight"])
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights_(other, str(tmp_path / "none.pt"))
