"""The command line refuses values out of range rather than running with something else."""

import pytest

from cloudtask.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [["worker", "--concurrency", "0"], ["worker", "--concurrency", "-1"],
     ["dev", "--concurrency", "1025"], ["dev", "--port", "70000"], ["api", "--port", "-1"],
     ["scheduler", "--port", "abc"], ["worker", "--grace", "-5"], ["worker", "--grace", "nan"],
     ["worker", "--grace", "inf"], ["api", "--workers", "0"]],
)  # fmt: skip
def test_values_out_of_range_are_refused_naming_the_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert f"argument {argv[1]}:" in capsys.readouterr().err


def test_values_in_range_are_taken() -> None:
    args = build_parser().parse_args(
        ["worker", "--concurrency", "1", "--grace", "0", "--port", "0"]
    )
    assert (args.concurrency, args.grace, args.port) == (1, 0.0, 0)
    assert build_parser().parse_args(["api", "--port", "65535"]).port == 65535
