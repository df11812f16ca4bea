"""The pieces the command-line tools share (qdq_toolkit._cli, _validation, _progress): one batch-size flag, one
count validator, one set of exit codes. In-process and TensorFlow-free, so fast."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from qdq_toolkit import _cli
from qdq_toolkit._validation import check_count, check_positive_int
from qdq_toolkit.evaluate.__main__ import build_parser as evaluate_parser
from qdq_toolkit.evaluate.errors import EvaluationError
from qdq_toolkit.export.__main__ import _parser as export_parser

EVALUATE_REQUIRED = ["--dataset", "digits", "--model", "m.onnx"]


@pytest.mark.parametrize("flag", ["--batch", "--batch-sizes"])
def test_both_clis_take_one_batch_flag_under_both_names(flag):
    assert export_parser().parse_args([flag, "1,8,8,32"]).batch_sizes == (1, 8, 32)
    assert evaluate_parser().parse_args([*EVALUATE_REQUIRED, flag, "4,2"]).batch_sizes == (4, 2)


def test_batch_flag_defaults_and_errors(capsys):
    assert export_parser().parse_args([]).batch_sizes == (1, 8, 32)
    for bad in ("0,8", "a", ","):
        with pytest.raises(SystemExit) as exit_info:
            export_parser().parse_args(["--batch", bad])
        assert exit_info.value.code == _cli.EXIT_USAGE
        assert "--batch-sizes/--batch" in capsys.readouterr().err


def test_argparse_counts():
    assert _cli.positive_int("3") == 3 and _cli.non_negative_int("0") == 0
    for parse, bad, words in ((_cli.positive_int, "0", "at least 1"), (_cli.non_negative_int, "-1", "at least 0"),
                              (_cli.positive_int, "x", "not an integer")):
        with pytest.raises(argparse.ArgumentTypeError, match=words):
            parse(bad)


def test_one_count_validator():
    assert check_positive_int("runs", np.int64(5)) == 5 and isinstance(check_positive_int("runs", np.int64(5)), int)
    assert check_count("warmup", 0, minimum=0) == 0
    assert check_count("max_batches", None, allow_none=True) is None
    for value in (0, -2, True, 1.5, "3", None):
        with pytest.raises(ValueError, match="runs must be a positive integer, got"):
            check_positive_int("runs", value)
    with pytest.raises(EvaluationError, match=r"warmup must be an integer >= 0 or None, got -1"):
        check_count("warmup", -1, minimum=0, allow_none=True, error=EvaluationError)


def test_exit_codes_keep_their_values():
    from qdq_toolkit.evaluate import __main__ as evaluate_cli
    from qdq_toolkit.export import __main__ as export_cli

    assert (export_cli.EXIT_OK, export_cli.EXIT_ERROR, export_cli.EXIT_USAGE) == (0, 1, 2)
    assert (export_cli.EXIT_VIOLATIONS, export_cli.EXIT_NO_TENSORRT, export_cli.EXIT_INTERRUPTED) == (3, 4, 130)
    assert (evaluate_cli.EXIT_NOTHING_EVALUATED, evaluate_cli.EXIT_INTERRUPTED) == (3, 130)
    assert "  4    --engine asked for" in export_parser().epilog
