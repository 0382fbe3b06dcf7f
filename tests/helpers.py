"""Helpers several test files share."""
from __future__ import annotations

import pytest

from fcosdet.cli.main import main


def error_line(capsys, argv: list[str]) -> str:
    """Run the CLI on `argv`, which must stop with status 2 and one `fcosdet: error:` line; that line."""
    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as code:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("fcosdet: error:"), err
    return err
