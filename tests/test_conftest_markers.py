import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize("require, expected", [("0", "1 skipped"), ("1", "1 error")])
def test_gpu_marker_skips_or_fails(tmp_path, require, expected):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the marker lets the test run")
    test = tmp_path / "test_needs_gpu.py"
    test.write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.gpu
            def test_cuda():
                import torch
                assert torch.cuda.is_available()
            """
        )
    )
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    env = dict(os.environ, KOMPAKT_REQUIRE_GPU=require)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert expected in out.stdout, out.stdout + out.stderr
    assert (out.returncode != 0) == (require == "1")
