"""Issue 13 on CPU: the Triton backend on every NVIDIA generation, checked without a GPU.

* Config selection by the device's real limits (``configs.select_table``): the class of each
  GPU family, and no configuration a class can select whose recorded shared memory (the
  committed AOT record ``benchmarks/results/aot_triton_cuda_all_targets.txt``) exceeds the
  per-block limit of any target of that class; one representative configuration per class is
  compiled here (the most shared memory in the record).
* The device guard: every entry (MMD, CORAL, quadratic forms) launches under its tensors'
  device, with a fake second device standing in for a GPU.
* float64 inputs run the float64 reference formulas, never a float32 kernel.
* The one-launch routes launch through a launcher cached per key: a second call with the same
  key builds nothing and makes exactly one launch and no host read of a device value.
* CUDA only (skipped here): no sync under ``torch.cuda.set_sync_debug_mode("error")``, and
  CUDA-graph capture and replay of a DA step.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
pytest.importorskip("triton")

import dapkernels as dk  # noqa: E402
from dapkernels.backends import get, reference  # noqa: E402
from dapkernels.backends.triton import aot, configs, coral_kernels, launchers, mmd_kernels  # noqa: E402
from dapkernels.backends.triton import device as tdevice  # noqa: E402

from .launches import record_launches  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
ALPHAS = [2.0**i for i in range(-3, 2)]
TRITON = get("triton")
UNBIASED = lambda n, m: (1.0 / (n * (n - 1)), -1.0 / (n * m), 1.0 / (m * (m - 1)))  # noqa: E731
MMD_KERNELS = ["mmd_small_kernel", "mmd_flash_kernel", "mmd_prep_kernel", "mmd_sweep_kernel",
               "mmd_wide_kernel", "mmd_finish_kernel"]
CORAL_KERNELS = ["coral_small_kernel", "coral_gram_kernel", "coral_grad_kernel"]

# ---- config selection ------------------------------------------------------------------------

#: (GPU, opt-in shared memory per block, compute capability, SMs) -> table
GPUS = [
    ("A100", 166912, (8, 0), 108, "163KB"),
    ("A10 / RTX 3090", 101376, (8, 6), 82, "99KB"),
    ("Jetson Orin", 166912, (8, 7), 16, "163KB"),
    ("L4 / L40S / RTX 4090", 101376, (8, 9), 58, "99KB"),
    ("H100 / H200", 232448, (9, 0), 132, "227KB"),
    ("B200", 232448, (10, 0), 148, "227KB"),
    ("RTX 5090", 101376, (12, 0), 170, "99KB"),
    ("T4 (below every class)", 65536, (7, 5), 40, "99KB"),
]


@pytest.mark.parametrize("name,shared,cc,sms,table", GPUS, ids=[g[0] for g in GPUS])
def test_select_table_by_the_devices_limits(name, shared, cc, sms, table):
    assert configs.select_table(shared, cc, sms) == table
    assert configs.TABLE_SHARED[table] <= max(shared, min(configs.TABLE_SHARED.values()))


class _Props:
    def __init__(self, shared: int, cc: tuple[int, int], sms: int) -> None:
        self.shared_memory_per_block_optin = shared
        self.major, self.minor = cc
        self.multi_processor_count = sms


def test_target_reads_the_device_properties(monkeypatch):
    """``device.target`` asks torch for the device's limits (here a fake sm_86 on cuda:1 next to
    a fake H100 on cuda:0) and caches the table per device."""
    props = {0: _Props(232448, (9, 0), 132), 1: _Props(101376, (8, 6), 82)}
    asked = []

    def fake(device):
        asked.append(device)
        return props[torch.device(device).index]

    monkeypatch.setattr(torch.cuda, "get_device_properties", fake)
    monkeypatch.setattr(tdevice, "_TARGET", {})
    assert tdevice.target(torch.device("cuda", 1)) == "99KB"
    assert tdevice.target(torch.device("cuda", 0)) == "227KB"
    assert tdevice.target(torch.device("cuda", 1)) == "99KB"
    assert len(asked) == 2


def test_every_target_has_its_class_limit():
    for table, archs in configs.TABLE_ARCHS.items():
        for arch in archs:
            assert configs.SHARED_LIMIT[arch] == configs.TABLE_SHARED[table]
            assert aot.table_of(arch) == table
    assert sorted(configs.SHARED_LIMIT) == [80, 86, 89, 90, 100, 120]
    assert configs.SHARED_LIMIT[86] == configs.SHARED_LIMIT[89] == configs.SHARED_LIMIT[120] \
        == 101376
    assert configs.SHARED_LIMIT[80] == 166912
    assert configs.SHARED_LIMIT[90] == configs.SHARED_LIMIT[100] == 232448


def _record() -> dict[tuple[int, str], tuple[int, int, int]]:
    """``{(arch, label): (registers, spill bytes, shared bytes)}`` of the committed record."""
    out = {}
    if not os.path.exists(aot.TABLE):
        return out
    with open(aot.TABLE) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[0].isdigit() and parts[1].isdigit():
                out[(int(parts[0]), parts[5].strip())] = (int(parts[1]), int(parts[2]),
                                                          int(parts[3]))
    return out


def test_no_selectable_config_exceeds_its_class_limit_in_the_aot_record():
    """Every configuration each class can launch is in the committed AOT record for every target
    of the class, without spills and within that target's shared memory per block."""
    assert os.path.exists(aot.TABLE), aot.TABLE
    record = _record()
    jobs = aot.shipped_jobs(aot.ARCHS)
    missing = [(j.arch, j.label) for j in jobs if (j.arch, j.label) not in record]
    assert not missing, missing[:5]
    for j in jobs:
        regs, spill, smem = record[(j.arch, j.label)]
        assert spill == 0 and 0 < regs <= 255, (j.arch, j.label)
        assert smem <= configs.SHARED_LIMIT[j.arch], (j.arch, j.label, smem)
        assert smem <= configs.TABLE_SHARED[aot.table_of(j.arch)], (j.arch, j.label, smem)


def test_aot_compile_of_one_representative_per_class():
    """Per class, the shipped configuration with the most recorded shared memory, compiled for
    the class's first target (sm_86, sm_80, sm_90) with triton's bundled ptxas, outside the
    interpreter: no spill, within the target's shared memory, and the recorded figure."""
    jobs = aot.representative_jobs()
    assert sorted(aot.table_of(j.arch) for j in jobs) == sorted(configs.TABLE_ARCHS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dapkernels.backends.triton.aot", "--representatives",
         "--jobs", "1"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, out
    record = _record()
    rows = [line for line in proc.stdout.splitlines() if "_kernel " in line]
    assert len(rows) == len(jobs), out
    for line, job in zip(rows, jobs):
        sm, regs, spill, smem = line.split()[:4]
        assert int(sm) == job.arch and line.split(maxsplit=5)[5] == job.label, line
        assert spill == "0" and int(smem) <= configs.SHARED_LIMIT[job.arch], line
        assert int(smem) == record[(job.arch, job.label)][2], line


# ---- device guard ----------------------------------------------------------------------------


class _FakeCuda:
    """``torch.cuda.device`` stand-in: tracks which device is current (cuda:0 at first)."""

    current: object = "cuda:0"

    def __init__(self, device) -> None:
        self.device, self.prev = device, None

    def __enter__(self):
        self.prev, _FakeCuda.current = _FakeCuda.current, self.device
        return self

    def __exit__(self, *exc):
        _FakeCuda.current = self.prev
        return False


class _AtLaunch:
    """Wraps a ``triton.jit`` kernel; records the current (fake) device at each launch."""

    def __init__(self, kernel, name: str, seen: list) -> None:
        self.kernel, self.name, self.seen = kernel, name, seen

    def __getitem__(self, grid):
        self.seen.append((self.name, _FakeCuda.current))
        return self.kernel[grid]


@pytest.fixture
def fake_second_device(monkeypatch):
    """CPU tensors play a second GPU: the guard is entered for them and the current device is
    tracked; returns the list of (kernel, current device) per launch."""
    from dapkernels.backends.triton import quadratic_forms_kernels

    seen: list = []
    monkeypatch.setattr(tdevice, "is_cuda", lambda device: True)
    monkeypatch.setattr(torch.cuda, "device", _FakeCuda)
    monkeypatch.setattr(_FakeCuda, "current", "cuda:0")
    for module, names in ((mmd_kernels, MMD_KERNELS), (coral_kernels, CORAL_KERNELS),
                          (quadratic_forms_kernels, ["quadratic_forms_kernel"])):
        for name in names:
            monkeypatch.setattr(module, name, _AtLaunch(getattr(module, name), name, seen))
    launchers.clear()
    yield seen
    launchers.clear()


@pytest.mark.skipif(ON_GPU, reason="the fake device stands CPU tensors in for a GPU")
def test_every_entry_launches_under_the_tensors_device(fake_second_device):
    from dapkernels.backends.triton.quadratic_forms import quadratic_forms

    seen = fake_second_device
    torch.manual_seed(0)
    s, t = torch.randn(40, 16), torch.randn(44, 16) + 0.3
    for rows in (10, 40):  # one launch (N = 20); prep + flash (N = 84)
        TRITON.mmd_loss([s[:rows]], [t[:rows]], [ALPHAS], [True], UNBIASED(rows, rows), 0.0,
                        torch.float32, True)
    TRITON.mmd_sweep([s, s[:, :3]], [t, t[:, :3]], [ALPHAS, ALPHAS], [True, True],
                     UNBIASED(40, 44), True)  # JMMD: prep per layer + sweep
    TRITON.coral_loss(s[:20], t[:20], True, "gram", torch.float32)  # one launch
    xs, xt = torch.randn(6, 2100), torch.randn(5, 2100)
    TRITON.coral_sweep(xs, xt, False, "gram")  # two kernels
    quadratic_forms(s, torch.tensor([0.5, 1.0], dtype=torch.float64),
                    torch.ones(40, 2, dtype=torch.int8), True)
    kernels = {name for name, _ in seen}
    assert kernels >= {"mmd_small_kernel", "mmd_prep_kernel", "mmd_flash_kernel",
                       "mmd_sweep_kernel", "coral_small_kernel", "coral_gram_kernel",
                       "coral_grad_kernel", "quadratic_forms_kernel"}, kernels
    assert all(current == torch.device("cpu") for _, current in seen), seen
    assert _FakeCuda.current == "cuda:0"  # restored after every entry


@pytest.mark.skipif(ON_GPU, reason="the fake device stands CPU tensors in for a GPU")
def test_float64_route_runs_under_the_tensors_device_too(fake_second_device, monkeypatch):
    from dapkernels.backends.triton import mmd as tmmd

    current = []
    formula = tmmd.mmd_formula

    def spy(*args):
        current.append(_FakeCuda.current)
        return formula(*args)

    monkeypatch.setattr(tmmd, "mmd_formula", spy)
    z = torch.randn(30, 5, dtype=torch.float64)
    TRITON.mmd_loss([z[:10]], [z[10:]], [ALPHAS], [True], UNBIASED(10, 20), 0.0,
                    torch.float64, True)
    assert current == [torch.device("cpu")] and _FakeCuda.current == "cuda:0"
    assert fake_second_device == []


# ---- float64 -------------------------------------------------------------------------------


def test_float64_routing_decision():
    from dapkernels.backends.triton import coral as tcoral
    from dapkernels.backends.triton import mmd as tmmd

    for module in (tmmd, tcoral):
        assert module.takes_reference(torch.float64)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            assert not module.takes_reference(dtype)


@pytest.mark.parametrize("rows", [(10, 12), (50, 60)])  # small-kernel and flash sizes
def test_float64_mmd_is_the_float64_reference_not_a_kernel(monkeypatch, rows):
    """float64 inputs launch no kernel: values and gradients are the float64 reference's."""
    n, m = rows
    torch.manual_seed(n)
    z = torch.randn(n + m, 7, dtype=torch.float64, device=DEVICE) * 3 + 1e3
    w = UNBIASED(n, m)
    with record_launches(monkeypatch, mmd_kernels, MMD_KERNELS) as record:
        sums, (grad,) = TRITON.mmd_sweep([z[:n]], [z[n:]], [ALPHAS], [True], w, True)
        value, (grad2,) = TRITON.mmd_loss([z[:n]], [z[n:]], [ALPHAS], [True], w, 0.25,
                                          torch.float64, True)
    assert record.launches == []
    assert "_local_scalar_dense" not in record.ops  # no host read of a device value
    ref_sums, (ref_grad,) = reference.mmd_sweep([z[:n]], [z[n:]], [ALPHAS], [True], w, True)
    assert torch.equal(sums, ref_sums) and torch.equal(grad, ref_grad)
    assert grad.dtype == torch.float64 and value.dtype == torch.float64
    coef = torch.tensor([w[0], 2 * w[1], w[2]], dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(value, torch.dot(ref_sums, coef) + 0.25, rtol=1e-15, atol=0)
    assert torch.equal(grad2, ref_grad)


@pytest.mark.parametrize("shape", [(6, 5, 40), (6, 5, 2100), (40, 50, 30)])
def test_float64_coral_is_the_float64_formula_not_a_kernel(monkeypatch, shape):
    ns, nt, d = shape
    torch.manual_seed(d)
    xs = torch.randn(ns, d, dtype=torch.float64, device=DEVICE) + 50
    xt = torch.randn(nt, d, dtype=torch.float64, device=DEVICE)
    path = "gram" if ns + nt < d else "cov"
    with record_launches(monkeypatch, coral_kernels, CORAL_KERNELS) as record:
        value, grads = TRITON.coral_loss(xs, xt, True, path, torch.float64)
    assert record.launches == []
    ref, ref_grads = reference.coral_sweep(xs, xt, True, "cov")
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=0)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, rg, rtol=1e-10, atol=1e-18)


def test_functional_float64_on_the_triton_backend_is_float64_exact():
    torch.manual_seed(3)
    s = torch.randn(16, 9, dtype=torch.float64, device=DEVICE, requires_grad=True)
    t = torch.randn(16, 9, dtype=torch.float64, device=DEVICE) + 0.2
    out = dk.mmd(s, t, backend="triton")
    ref = dk.mmd(s, t, backend="reference")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)


# ---- cached launchers ----------------------------------------------------------------------


def test_second_call_with_the_same_key_reuses_the_launcher_and_launches_once(monkeypatch):
    launchers.clear()
    builds, calls = [], []
    build = launchers._build

    def counting(kernel, grid, device, args, consts):
        builds.append(consts.get("HAS_GRAD"))
        inner = build(kernel, grid, device, args, consts)

        def launcher(*a):
            calls.append(len(a))
            inner(*a)
        return launcher

    monkeypatch.setattr(launchers, "_build", counting)
    torch.manual_seed(5)
    s = torch.randn(24, 64, device=DEVICE)
    t = torch.randn(24, 64, device=DEVICE) + 0.3
    w = UNBIASED(24, 24)
    with record_launches(monkeypatch, mmd_kernels, MMD_KERNELS) as record:
        v1, (g1,) = TRITON.mmd_loss([s], [t], [ALPHAS], [True], w, 0.0, torch.float32, True)
        assert len(builds) == 1 and len(calls) == 1 and launchers.cache_size() == 1
        first_ops = len(record.ops)
        v2, (g2,) = TRITON.mmd_loss([s], [t], [ALPHAS], [True], w, 0.0, torch.float32, True)
    assert len(builds) == 1 and len(calls) == 2  # same key: nothing built, one launch
    assert record.launches == ["mmd_small_kernel"] * 2
    second = record.ops[first_ops:]
    # output allocations only: no copy, no memset, no host read of a device value
    assert second and set(second) <= {"empty.memory_format"}, second
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    TRITON.mmd_loss([s[:20]], [t[:20]], [ALPHAS], [True], UNBIASED(20, 20), 0.0,
                    torch.float32, True)
    assert len(builds) == 2  # another shape, another key
    TRITON.mmd_loss([s], [t], [ALPHAS], [True], w, 0.0, torch.float32, False)
    assert builds[-1] is False  # without the gradient: another compilation, another key


def test_launch_key_reads_host_metadata_only():
    """Tensors by dtype and 16-byte alignment, ints by value, floats not at all."""
    a = torch.empty(16, dtype=torch.float32, device=DEVICE)
    k1 = launchers.launch_key("k", (1,), a.device, (a, 3, 0.5), {"BN": 64})
    k2 = launchers.launch_key("k", (1,), a.device, (a.clone(), 3, 0.25), {"BN": 64})
    k3 = launchers.launch_key("k", (1,), a.device, (a[1:], 3, 0.5), {"BN": 64})
    k4 = launchers.launch_key("k", (1,), a.device, (a, 16, 0.5), {"BN": 64})
    assert k1 == k2 and k1 != k3 and k1 != k4


def test_coral_small_route_reuses_its_launcher(monkeypatch):
    launchers.clear()
    xs, xt = torch.randn(16, 40, device=DEVICE), torch.randn(16, 40, device=DEVICE)
    TRITON.coral_loss(xs, xt, True, "gram", torch.float32)
    size = launchers.cache_size()
    builds = []
    monkeypatch.setattr(launchers, "_build", lambda *a: builds.append(a) or (lambda *x: None))
    TRITON.coral_loss(xs, xt, True, "gram", torch.float32)
    assert builds == [] and launchers.cache_size() == size


class _Param:
    def __init__(self, name: str, is_constexpr: bool) -> None:
        self.name, self.is_constexpr = name, is_constexpr


class _FakeCompiled:
    """Stands in for triton's CompiledKernel: records each launcher call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.function, self.packed_metadata = "fn", "packed"

    def _init_handles(self) -> None:
        pass

    def run(self, *args) -> None:
        self.calls.append(args)

    def launch_metadata(self, grid, stream, *args):
        return "meta"


class _FakeJit:
    """A kernel ``k(x_ptr, n, BLOCK: constexpr)`` whose warmup returns a fake compiled kernel."""

    params = [_Param("x_ptr", False), _Param("n", False), _Param("BLOCK", True)]

    def __init__(self) -> None:
        self.compiled, self.warmups = _FakeCompiled(), []

    def warmup(self, *args, grid, **kwargs):
        self.warmups.append((args, grid, kwargs))
        return self.compiled

    def __getitem__(self, grid):
        raise AssertionError("the direct launcher must not go through kernel[grid]")


def test_direct_launcher_calls_the_compiled_launcher_with_every_argument(monkeypatch):
    """The CUDA branch of the launcher cache, without a GPU: compiled once (warmup with the
    constexprs and options), then each launch calls ``CompiledKernel.run`` with the grid, the
    current stream of the tensor's device, and the runtime arguments followed by the constexprs,
    as ``JITFunction.run`` does."""
    import triton
    from triton.runtime import driver

    class _Driver:
        def get_current_stream(self, index):
            return f"stream{index}"

    monkeypatch.setattr(driver, "_active", _Driver())
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", None)
    launchers.clear()
    kernel = _FakeJit()
    cuda1 = torch.device("cuda", 1)
    x = torch.empty(8)
    for n in (5, 5, 5):
        launchers.launch(kernel, (2,), cuda1, (x, n), {"BLOCK": 32, "num_warps": 4})
    assert len(kernel.warmups) == 1
    (args, grid, kwargs), = kernel.warmups
    assert args == (x, 5) and grid == (2,) and kwargs == {"BLOCK": 32, "num_warps": 4}
    assert kernel.compiled.calls == [
        (2, 1, 1, "stream1", "fn", "packed", None, None, None, x, 5, 32)] * 3
    launchers.launch(kernel, (2,), cuda1, (x, 16), {"BLOCK": 32, "num_warps": 4})
    assert len(kernel.warmups) == 2  # 16 is specialised differently from 5: a new key
    launchers.clear()


def test_launcher_falls_back_to_triton_for_unknown_kernel_objects(monkeypatch):
    seen = []

    class _Plain:
        def __getitem__(self, grid):
            return lambda *a, **k: seen.append((grid, a, k))

    launchers.clear()
    x = torch.empty(4)
    launchers.launch(_Plain(), (1,), torch.device("cuda", 0), (x, 3), {"BLOCK": 16})
    assert seen == [((1,), (x, 3), {"BLOCK": 16})]
    launchers.clear()


# ---- CUDA only --------------------------------------------------------------------------------


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_small_routes_do_not_synchronise():
    s = torch.randn(32, 256, device="cuda", requires_grad=True)
    t = torch.randn(32, 256, device="cuda") + 0.3
    dk.mmd(s, t).backward()
    dk.coral(s, t).backward()  # warm-up: compile, plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            (dk.mmd(s, t) + dk.coral(s, t)).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_cuda_graph_capture_and_replay_of_a_da_step():
    """Forward and backward of a DA step (features, MMD + CORAL) captured once and replayed on
    new inputs: the same loss and gradients as eager on a copy of the network."""
    import copy

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 256)).cuda()
    ref_net = copy.deepcopy(net)
    xs = torch.randn(32, 32, device="cuda")
    xt = torch.randn(32, 32, device="cuda") + 0.5

    def step(model):
        fs, ft = model(xs), model(xt)
        loss = dk.mmd(fs, ft) + dk.coral(fs, ft)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up: compiles, launchers, device tables
            net.zero_grad(set_to_none=True)
            step(net)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    net.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = step(net)
    for trial in range(3):
        xs.copy_(torch.randn(32, 32, device="cuda"))
        xt.copy_(torch.randn(32, 32, device="cuda") + 0.5 * trial)
        graph.replay()
        torch.cuda.synchronize()
        ref_net.zero_grad(set_to_none=True)
        ref = step(ref_net)
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-7)
        for p, rp in zip(net.parameters(), ref_net.parameters()):
            torch.testing.assert_close(p.grad, rp.grad, rtol=1e-4, atol=1e-6)
