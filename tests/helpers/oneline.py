"""The one check every user-error test makes: the entry point exits 2 with exactly one `error: ...` line."""


def refused(argv, capsys, entry=None) -> str:
    """Run a CLI in-process (python -m train's by default); it must exit 2 with exactly one 'error: ...' line on
    stderr and no traceback. Returns that line."""
    if entry is None:
        from train.__main__ import main as entry
    rc = entry([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]
