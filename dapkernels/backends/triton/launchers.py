"""Cached direct launchers of the one-launch small-batch kernels (docs/design.md §Routes).

At DA batch sizes (n + m ≤ 64) a fused kernel runs for a few microseconds, so the host work of
``kernel[grid](...)`` (binding every argument, computing triton's specialisation key, looking
up its kernel cache, reading the launch hooks) is a visible share of a training step.
:func:`launch` does that work once per key and then calls the compiled kernel's launcher
directly: one dict lookup, one stream query and the C launch call per step.

The key holds everything triton specialises a compilation on, read from host-side metadata
only (no device value is read, nothing synchronises): the kernel, the grid, the device, per
tensor argument its dtype and whether its address is 16-byte aligned, per integer argument its
value (triton specialises on 1, on divisibility by 16 and on the integer width; shapes and
strides are small, so the value itself is the key), the constexprs and the launch options.
Floats (the estimator weights) are not part of a compilation and stay out of the key.

Launches go to the current stream of the current device; every backend entry runs under
``device.on_device``, so that is the tensors' device (and the capture stream inside
``torch.cuda.graph``).  Under ``TRITON_INTERPRET=1`` (CPU tensors) nothing is compiled: the
cached launcher calls ``kernel[grid]`` of the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["launch", "launch_key", "clear", "cache_size"]

#: at most this many launchers are kept (shapes change rarely in training; an evaluation sweep
#: over many batch sizes clears the cache instead of growing without bound).
MAX_LAUNCHERS = 512

_LAUNCHERS: dict[tuple, Callable[..., None]] = {}


def _arg_key(a: object) -> object:
    if isinstance(a, torch.Tensor):
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, bool) or isinstance(a, int):
        return a
    if isinstance(a, float):
        return float
    raise TypeError(f"unsupported kernel argument {type(a).__name__}")


#: launch options among the constants (the rest are the kernel's constexprs).
_OPTIONS = frozenset({"num_warps", "num_stages", "maxnreg"})


def launch_key(kernel: object, grid: tuple[int, ...], device: torch.device, args: tuple,
               consts: dict[str, object]) -> tuple:
    """The cache key of one launch (see the module docstring)."""
    return (kernel, grid, device, tuple(_arg_key(a) for a in args), tuple(consts.items()))


def _build(kernel, grid: tuple[int, ...], device: torch.device, args: tuple,
           consts: dict[str, object]) -> Callable[..., None]:
    """A launcher for ``kernel`` with this key: compiled once, then launched directly."""
    def through_triton(*call_args):
        kernel[grid](*call_args, **consts)

    if device.type != "cuda":  # interpreter: no compiled form
        return through_triton
    try:
        return _direct(kernel, grid, device, args, consts)
    except (AttributeError, TypeError, KeyError):
        # a triton whose CompiledKernel differs from 3.x's: its own (slower) launch path
        return through_triton


def _hook(hook: object) -> object:
    """A launch hook, or None where there is none to call (triton 3.9 keeps an empty
    ``HookChain`` by default; passing None skips the launch-metadata dict and the hook calls)."""
    return None if hook is None or getattr(hook, "calls", None) == [] else hook


def _direct(kernel, grid: tuple[int, ...], device: torch.device, args: tuple,
            consts: dict[str, object]) -> Callable[..., None]:
    """Compiles ``kernel`` for this key and returns a call of its launcher (triton 3.x:
    ``CompiledKernel.run(gx, gy, gz, stream, function, packed_metadata, launch_metadata,
    enter_hook, exit_hook, *every_argument)``, as ``JITFunction.run`` calls it)."""
    constexprs = {k: v for k, v in consts.items() if k not in _OPTIONS}

    from triton import knobs
    from triton.runtime import driver

    params = kernel.params
    runtime = [p for p in params if not p.is_constexpr]
    if len(runtime) != len(args) or any(p.is_constexpr for p in params[:len(args)]):
        raise TypeError(f"{kernel}: runtime arguments must come first and be passed in order")
    tail = tuple(constexprs[p.name] for p in params[len(args):])
    compiled = kernel.warmup(*args, grid=grid, **consts)
    if compiled is None:  # asynchronous compilation mode: nothing to launch directly yet
        raise TypeError("no compiled kernel")
    compiled._init_handles()
    run, function, packed = compiled.run, compiled.function, compiled.packed_metadata
    index = device.index if device.index is not None else torch.cuda.current_device()
    get_stream = driver.active.get_current_stream
    g0, g1, g2 = (tuple(grid) + (1, 1))[:3]

    def direct(*call_args):
        stream = get_stream(index)
        enter, leave = _hook(knobs.runtime.launch_enter_hook), _hook(knobs.runtime.launch_exit_hook)
        meta = None if enter is None else compiled.launch_metadata(grid, stream, *call_args,
                                                                   *tail)
        run(g0, g1, g2, stream, function, packed, meta, enter, leave, *call_args, *tail)
    return direct


def launch(kernel, grid: tuple[int, ...], device: torch.device, args: tuple,
           consts: dict[str, object]) -> None:
    """Launches ``kernel[grid](*args, **consts)`` through a launcher cached per
    :func:`launch_key`.  ``args`` are the kernel's runtime (non-constexpr) parameters in order,
    ``consts`` its constexprs and the launch options (``num_warps``, ``num_stages``)."""
    key = launch_key(kernel, grid, device, args, consts)
    hit = _LAUNCHERS.get(key)
    if hit is None:
        if len(_LAUNCHERS) >= MAX_LAUNCHERS:
            _LAUNCHERS.clear()
        hit = _LAUNCHERS[key] = _build(kernel, grid, device, args, consts)
    hit(*args)


def clear() -> None:
    """Drops every cached launcher (tests)."""
    _LAUNCHERS.clear()


def cache_size() -> int:
    """Number of cached launchers."""
    return len(_LAUNCHERS)
