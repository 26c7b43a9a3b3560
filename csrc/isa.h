// Instruction-set dispatch shared by every kernel family of the CPU core.
//
// Each family keeps its vector code in a header (csrc/<op>_kernel.h) that is compiled once per
// instruction set, inside namespace isa_base / isa_avx2 / isa_avx512 and under
// `#pragma GCC target(...)`, with DK_VBYTES (16, 32, 64) set to that copy's native vector width
// (simd.h); csrc/isa_copies.h does this for a family.  The copy to run is chosen once per process by
// active_isa(): the best the CPU supports, capped by DAPKERNELS_ISA.
//
// x86 copies exist only when DK_X86 is set: on other architectures (aarch64, …) and in a
// portable build (-DDK_PORTABLE) only the 16-byte generic copy is compiled, which GCC/Clang
// lower to the target's own vectors (NEON on aarch64).
#pragma once

#if (defined(__x86_64__) || defined(__i386__)) && !defined(DK_PORTABLE)
#define DK_X86 1
#endif

// Body of a family's kernels<T>() accessor: returns MAKE(ns, T), the table of entry points
// of the active copy's namespace ns (isa_base, isa_avx2 or isa_avx512).
#ifdef DK_X86
#define DK_SELECT_ISA(MAKE, T)                                              \
  switch (::dk::active_isa()) {                                             \
    case ::dk::Isa::avx512: return MAKE(isa_avx512, T);                     \
    case ::dk::Isa::avx2: return MAKE(isa_avx2, T);                         \
    default: return MAKE(isa_base, T);                                      \
  }
#else
#define DK_SELECT_ISA(MAKE, T) return MAKE(isa_base, T)
#endif

namespace dk {

enum class Isa { base = 0, avx2 = 1, avx512 = 2 };

// The copy every kernel runs: the widest one this CPU supports, capped by the environment
// variable DAPKERNELS_ISA=baseline|avx2|avx512, read once, at import.  An unknown value makes
// isa_error() non-empty (the module refuses to import with that message).
Isa active_isa();
const char* isa_name(Isa isa);
const char* isa_error();

}  // namespace dk
