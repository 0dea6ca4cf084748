"""Count the ATen operators a piece of code dispatches: a device-independent proxy for kernel launches.

On a GPU, a small model's step time is dominated by how many kernels it launches, not by FLOPs.
Counting the leaf ATen operators that run (on CPU, with `torch.profiler`) tracks that number
without a GPU, so a test can keep it from regressing.

Counted: each dispatch of an operator that does work of its own, once: an `aten::` event counts
unless (1) it only makes a new view or shape of existing memory, is a no-op or a pure allocation
(`VIEW_AND_SHAPE_OPS`: none launches a kernel), (2) it is a *composite* operator
(`CompositeImplicitAutograd`, e.g. `aten::linear`, `aten::dropout`): the operators it
dispatches are counted instead (none for dropout in eval mode), or (3) it runs inside an event already counted (e.g. the
`copy_` of the bias inside `baddbmm`: part of one dispatched operator).

Example:

```python
>>> import torch
>>> from i2moe.profiling import count_aten_ops
>>> x = torch.randn(4, 3)
>>> count_aten_ops(lambda: (x.t() @ x).relu().view(-1))
2
```
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


VIEW_AND_SHAPE_OPS = frozenset(
    "aten::" + name
    for name in (
        "view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "expand", "expand_as", "slice",
        "permute", "unsqueeze", "squeeze", "as_strided", "t", "numpy_T", "select", "unbind", "split",
        "split_with_sizes", "chunk", "alias", "detach", "detach_", "flatten", "unflatten", "view_as", "narrow",
        "diagonal", "movedim", "lift_fresh", "contiguous", "_local_scalar_dense", "is_nonzero", "item",
        "empty", "empty_like", "empty_strided", "resize_", "set_", "result_type", "to", "type_as",
        "broadcast_tensors", "_has_compatible_shallow_copy_type", "is_same_size", "size", "stride",
        "resolve_conj", "resolve_neg", "conj", "_neg_view", "_conj",
    )
)


@functools.cache
def is_composite(name: str) -> bool:
    """Whether ATen operator `name` (e.g. `"aten::linear"`) is implemented in terms of other
    operators (`CompositeImplicitAutograd`) in all its overloads (`out=` variants aside); the
    profiler does not say which overload ran."""
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return False
    verdicts = []
    for overload in packet.overloads():
        if overload.endswith("out"):
            continue
        try:
            verdicts.append(torch._C._dispatch_has_kernel_for_dispatch_key(
                name if overload == "default" else f"{name}.{overload}", "CompositeImplicitAutograd"))
        except RuntimeError:  # TorchScript-only overloads (e.g. `aten::add.t`) are not in the dispatcher
            continue
    return bool(verdicts) and all(verdicts)


def aten_op_counts(fn: Callable[[], object]) -> Counter:
    """Run `fn()` once under the CPU profiler; return how many times each counted operator ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: Counter = Counter()
    counted = set()
    for event in sorted(prof.events(), key=lambda event: event.time_range.start):
        if not _counts(event):
            continue
        parent = event.cpu_parent
        while parent is not None and id(parent) not in counted:
            parent = parent.cpu_parent
        if parent is None:  # not inside an operator already counted
            counted.add(id(event))
            counts[event.name] += 1
    return counts


def _counts(event) -> bool:
    name = event.name
    return name.startswith("aten::") and name not in VIEW_AND_SHAPE_OPS and not is_composite(name)


def count_aten_ops(fn: Callable[[], object]) -> int:
    """The number of leaf, non-view ATen operators `fn()` dispatches (see `aten_op_counts`)."""
    return sum(aten_op_counts(fn).values())


def elapsed_ms(fn: Callable[[], object], device: str) -> float:
    """Milliseconds one call of `fn` takes: CUDA events on a GPU (kernels are asynchronous), the
    wall clock on CPU."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


__all__ = ["VIEW_AND_SHAPE_OPS", "aten_op_counts", "count_aten_ops", "elapsed_ms"]
