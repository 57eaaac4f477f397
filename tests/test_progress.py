"""Progress off a terminal: heartbeat lines with counts and ETA instead of a silent log."""

from kompakt.progress import Heartbeat, progress


def test_heartbeat_lines_off_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("KOMPAKT_HEARTBEAT_S", "0")  # a line every step
    bar = progress(range(4), desc="calibrating")
    assert isinstance(bar, Heartbeat)  # capsys' stderr is not a TTY
    for _ in bar:
        bar.set_postfix(loss="0.5")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("calibrating: 2/4 (50 %)") and "ETA" in lines[1]
    assert lines[-1].endswith("loss=0.5")


def test_heartbeat_is_rate_limited_and_quiet_is_silent(monkeypatch, capsys):
    monkeypatch.setenv("KOMPAKT_HEARTBEAT_S", "3600")
    list(progress(range(100), desc="bench"))
    list(progress(range(100), desc="bench", quiet=True))
    assert capsys.readouterr().err == ""


def test_training_without_a_terminal_prints_heartbeats(monkeypatch, capsys, tmp_path):
    from kompakt.train import TrainConfig, fit

    monkeypatch.setenv("KOMPAKT_HEARTBEAT_S", "0")
    fit(TrainConfig(model="lenet5", data="digits", epochs=1, batch_size=256, out=str(tmp_path)))
    err = capsys.readouterr().err
    assert "epoch 1/1: 1/" in err and "ETA" in err  # step heartbeats
    assert "epoch=1, train_loss=" in err  # and the per-epoch line
