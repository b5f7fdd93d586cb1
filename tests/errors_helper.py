"""Shared by the attack tests: bad input must end in one clear NgfkitError line."""
import pytest

from ngfkit.errors import NgfkitError


def one_line_error(fn, *args, **kwargs) -> str:
    """Call ``fn``; check it raises a one-line :class:`NgfkitError`; return the message."""
    with pytest.raises(NgfkitError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg
