"""Comparing parameters after optimizer steps computed two ways (collectives or kernels that sum in another
order, on one process or two)."""

import numpy as np

OUTLIER_SHARE = 1e-3  # the elements of a tensor allowed outside the tight tolerance (at least one)


def assert_adam_params_close(got, want, *, rtol: float, atol: float, max_step: float, name: str = "") -> None:
    """`got` equals `want` within rtol/atol, except for at most 0.1% of a tensor's elements (at least one),
    which must still be within `max_step`. Adam divides each gradient element by its own RMS, so an element
    whose gradient is near zero turns float-level summation differences into a step difference of up to
    2 lr per step; an exact comparison of every element holds or fails by the luck of the gradient."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    close = np.abs(got - want) <= atol + rtol * np.abs(want)
    outliers = int((~close).sum())
    assert outliers <= max(1, int(OUTLIER_SHARE * close.size)), f"{name}: {outliers} of {close.size} elements differ"
    np.testing.assert_allclose(got, want, rtol=0, atol=max_step, err_msg=name)
