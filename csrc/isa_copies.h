// Compiles one kernel family's vector code once per instruction set (see isa.h).  Use inside
// the family's namespace:
//
//   #define DK_KERNEL_HEADER "mmd_kernel.h"
//   #include "isa_copies.h"
//
// The header is included in namespaces isa_base (16-byte vectors), isa_avx2 and isa_avx512
// (x86 builds only, each under its `#pragma GCC target`), with DK_VBYTES set to the copy's
// native vector width and simd.h included first.  A kernel header #undefs its own macros at its
// end, so that the next copy can define them again.  No include guard on purpose.

namespace isa_base {
#define DK_VBYTES 16
#include "simd.h"
#include DK_KERNEL_HEADER
#undef DK_VBYTES
}  // namespace isa_base

#ifdef DK_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2")
namespace isa_avx2 {
#define DK_VBYTES 32
#include "simd.h"
#include DK_KERNEL_HEADER
#undef DK_VBYTES
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi,bmi2,prefer-vector-width=512")
namespace isa_avx512 {
#define DK_VBYTES 64
#include "simd.h"
#include DK_KERNEL_HEADER
#undef DK_VBYTES
}  // namespace isa_avx512
#pragma GCC pop_options
#endif

#undef DK_KERNEL_HEADER
