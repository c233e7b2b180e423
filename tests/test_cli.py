"""run_cli: how every command ends on bad input (one message, status 1, the traceback only when asked)."""

from __future__ import annotations

import pytest

from tencentpretrain.checkpoint import CheckpointError
from tencentpretrain.cli import naming, run_cli
from tencentpretrain.config import ConfigError
from tencentpretrain.convert import ConversionError
from tencentpretrain.data import CorpusError, DatasetError
from tencentpretrain.errors import InputError
from tencentpretrain.tokenizers import TokenizerError
from tencentpretrain.training.freezing import PatternError
from tencentpretrain.training.inputs import SetupError
from tencentpretrain.training.loop import TrainingStopped
from tencentpretrain.training.lora import LoraError
from tencentpretrain.training.options import OptionsError


@pytest.mark.parametrize("error", [CheckpointError, ConfigError, ConversionError, CorpusError, DatasetError,
                                   TokenizerError, SetupError, LoraError, PatternError, OptionsError,
                                   TrainingStopped])
def test_documented_errors_are_input_errors_and_still_value_errors(error):
    assert issubclass(error, InputError) and issubclass(error, ValueError)


def failing(error: BaseException):
    def main(argv):
        raise error
    return main


def test_input_error_is_one_line_and_status_1(capsys, monkeypatch):
    monkeypatch.delenv("TP_DEBUG", raising=False)
    assert run_cli(failing(ConfigError("x.json: unknown key 'a'")), [], prog="tool.py") == 1
    captured = capsys.readouterr()
    assert captured.err == "tool.py: error: x.json: unknown key 'a'\n" and captured.out == ""


@pytest.mark.parametrize("how", ["env", "flag"])
def test_debug_adds_the_traceback_and_the_flag_is_not_passed_on(capsys, monkeypatch, how):
    monkeypatch.delenv("TP_DEBUG", raising=False)
    if how == "env":
        monkeypatch.setenv("TP_DEBUG", "1")
    seen = []

    def main(argv):
        seen.append(argv)
        raise CheckpointError("m.bin: empty file")

    assert run_cli(main, ["--a", "1"] + (["--debug"] if how == "flag" else []), prog="p") == 1
    err = capsys.readouterr().err
    assert seen == [["--a", "1"]]
    assert err.startswith("Traceback (most recent call last)") and err.endswith("p: error: m.bin: empty file\n")


def test_os_error_naming_a_file_is_reported_other_errors_propagate(capsys, monkeypatch):
    monkeypatch.delenv("TP_DEBUG", raising=False)
    assert run_cli(failing(PermissionError(13, "Permission denied", "/out/m.bin")), [], prog="p") == 1
    assert capsys.readouterr().err == "p: error: /out/m.bin: Permission denied\n"
    with pytest.raises(OSError):
        run_cli(failing(OSError(22, "Invalid argument")), [])
    with pytest.raises(RuntimeError):  # a bug keeps its traceback
        run_cli(failing(RuntimeError("bug")), [])


def test_exit_status(capsys):
    assert run_cli(lambda argv: 3, []) == 3
    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(lambda argv: {"counts": {}}, []) == 0  # a report returned for tests
    assert run_cli(failing(KeyboardInterrupt()), [], prog="p") == 130
    assert capsys.readouterr().err == "p: interrupted\n"


def test_naming_prefixes_the_flag_only_for_its_own_file():
    with pytest.raises(CheckpointError, match=r"^--load_model_path m\.bin: empty file$"):
        with naming("--load_model_path", "m.bin"):
            raise CheckpointError("m.bin: empty file")
    with pytest.raises(ConfigError, match=r"^c\.json: bad$"):  # another file's fault
        with naming("--load_model_path", "m.bin"):
            raise ConfigError("c.json: bad")
    with pytest.raises(InputError, match=r"^--spm_model_path t\.model: x$"):  # not doubled
        with naming("--spm_model_path", "t.model"), naming("--spm_model_path", "t.model"):
            raise InputError("t.model: x")
    with naming("--dev_dataset_path", None):
        pass
