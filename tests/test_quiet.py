"""Other libraries' log lines and warnings stay off the terminal unless --debug (issue 29)."""

from __future__ import annotations

import logging
import warnings

from kompakt.quiet import quiet_libraries


def test_third_party_logs_and_warnings_are_hidden_and_errors_summarised(capsys):
    shown: list[str] = []
    with quiet_libraries(echo=shown.append) as hidden:
        logging.warning("Axis 1 is out-of-range for weight 'features.5.weight' with rank 1")
        logging.getLogger("onnxruntime").error("something broke")
        warnings.warn("a torch.onnx internal", UserWarning, stacklevel=1)  # from this test file
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    assert any("Axis 1" in h for h in hidden) and any("torch.onnx" in h for h in hidden)
    assert len(shown) == 1 and "1 error message(s) from onnxruntime" in shown[0]
    assert "--debug" in shown[0]


def test_kompakt_warnings_are_one_line_and_debug_shows_everything(capsys):
    from kompakt.train.trainer import TrainConfig, _warn_if_short

    shown: list[str] = []
    with quiet_libraries(echo=shown.append):
        _warn_if_short(TrainConfig(epochs=1, batch_size=64), 100)
    assert len(shown) == 1 and shown[0].startswith("kompakt: warning: this run makes only 2")
    handlers, show = list(logging.getLogger().handlers), warnings.showwarning
    with quiet_libraries(debug=True, echo=shown.append):  # --debug: nothing intercepted
        assert logging.getLogger().handlers == handlers and warnings.showwarning is show
