"""A tensor function run through ``torch.compile`` when it can be, and eagerly when it cannot."""

from __future__ import annotations

from typing import Callable

import torch

from mvmr import messages


class CompiledOrEager:
    """Calls ``fn`` compiled by ``torch.compile(dynamic=True)`` (one kernel instead of one pass over memory per
    elementwise op); compiled lazily on the first call. If compiling or running the compiled code raises (no C++
    compiler, an unsupported backend) and ``fn`` itself succeeds, one line goes to stderr and ``fn`` runs eagerly
    from then on: the result is the same function's either way. An error of ``fn`` itself (bad inputs) propagates.
    ``fn`` must be free of Python side effects and data-dependent control flow."""

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn = fn
        self._compiled: Callable[..., torch.Tensor] | None = None
        self.failed = False

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure: the eager function is the fallback
            result = self.fn(*args)  # raises too when the inputs, not the compiler, are at fault
            self.failed = True
            reason = (str(error).strip().splitlines() or [""])[0][:200]
            messages.warn(
                f"warning: torch.compile of {self.fn.__name__} failed ({type(error).__name__}: {reason}); it "
                f"runs eagerly (compile_view_ops: false skips the attempt)"
            )
            return result
