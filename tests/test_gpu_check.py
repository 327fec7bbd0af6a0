"""scripts/gpu_check.sh runs, and passes its CPU parts, on a CPU: the prepared GPU check does not rot.

Its quick mode starts Python five times and imports every test module once: about a minute on 2 cores,
which CI spends so that the script the first GPU task runs is known to work.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_passes_its_cpu_parts_in_quick_mode(tmp_path):
    env = os.environ | {"GPU_CHECK_QUICK": "1", "GPU_CHECK_OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    run = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    for step in ("cuda_tests", "embedding", "train_amp", "train_resume"):
        assert f"| {step} | pass |" in summary
    assert "| index, end to end | resnet18 |" in summary and "| train --amp, --resume | small |" in summary
