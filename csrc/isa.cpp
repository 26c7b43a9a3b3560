// Run-time choice of the instruction-set copy (csrc/isa.h).
#include "isa.h"

#include <cstdlib>
#include <cstring>

namespace dk {
namespace {

struct Choice {
  Isa isa = Isa::base;
  const char* error = "";
};

Choice detect() {
  Choice c;
  const char* env = std::getenv("DAPKERNELS_ISA");
  Isa cap = Isa::avx512;
  if (env != nullptr && *env != '\0') {
    if (std::strcmp(env, "baseline") == 0) {
      cap = Isa::base;
    } else if (std::strcmp(env, "avx2") == 0) {
      cap = Isa::avx2;
    } else if (std::strcmp(env, "avx512") != 0) {
      c.error = "DAPKERNELS_ISA must be one of baseline, avx2, avx512 (or unset)";
      return c;
    }
  }
  Isa best = Isa::base;
#ifdef DK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    best = Isa::avx512;
#endif
  c.isa = static_cast<int>(best) < static_cast<int>(cap) ? best : cap;
  return c;
}

const Choice& choice() {
  static const Choice c = detect();  // thread-safe one-time initialisation
  return c;
}

}  // namespace

Isa active_isa() { return choice().isa; }
const char* isa_error() { return choice().error; }

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace dk
