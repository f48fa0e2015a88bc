"""Validation of the joblib-specific options, with messages a test can match."""

from __future__ import annotations

import os

from joblib._utils import eval_expr
from joblib.disk import memstr_to_bytes

__all__ = [
    "JOBLIB_BACKENDS",
    "MAP_ENGINES",
    "check_batch_size",
    "check_choice",
    "check_inner_threads",
    "check_max_nbytes",
    "check_mmap_mode",
    "check_pre_dispatch",
    "check_temp_folder",
]

#: The joblib backends an executor can run on.
JOBLIB_BACKENDS = ("loky", "threading", "multiprocessing")
#: What runs ``map``: the project's shared map, or ``joblib.Parallel``.
MAP_ENGINES = ("shared", "parallel")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )
    assert isinstance(value, str)
    return value


def check_batch_size(value: object) -> int | str:
    if value == "auto":
        return "auto"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"batch_size must be 'auto' or an int, got {value!r}")
    if value < 1:
        raise ValueError(f"batch_size must be 'auto' or >= 1, got {value!r}")
    return value


def check_pre_dispatch(value: object, workers: int) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"pre_dispatch must be an int or an expression such as '2 * n_jobs', "
            f"got {value!r}"
        )
    if value == "all":
        return value
    amount: object = value
    if isinstance(value, str):
        try:
            amount = eval_expr(value.replace("n_jobs", str(workers)))
        except ValueError as exc:
            raise ValueError(f"pre_dispatch {value!r} is not valid: {exc}") from None
    if not isinstance(amount, (int, float)) or int(amount) < 1:
        raise ValueError(f"pre_dispatch must amount to at least 1 item, got {value!r}")
    return value


def check_max_nbytes(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return int(memstr_to_bytes(value))
        except (ValueError, IndexError):
            raise ValueError(
                f"max_nbytes must be bytes (int) or a size such as '1M', got {value!r}"
            ) from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"max_nbytes must be an int, a size such as '1M' or None, got {value!r}"
        )
    if value < 0:
        raise ValueError(f"max_nbytes must be >= 0, got {value!r}")
    return value


def check_mmap_mode(value: object) -> str | None:
    if value not in ("r", "r+", "w+", "c", None):
        raise ValueError(
            f"mmap_mode must be 'r', 'r+', 'w+', 'c' or None, got {value!r}"
        )
    return value


def check_temp_folder(value: object) -> str | None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"temp_folder must be a path or None, got {value!r}")
    return None if value is None else os.fspath(value)


def check_inner_threads(value: object) -> int | None:
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value < 1
    ):
        raise ValueError(
            f"inner_max_num_threads must be an int >= 1 or None, got {value!r}"
        )
    return value
