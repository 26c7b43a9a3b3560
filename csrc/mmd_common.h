// Data shared by every instruction-set copy of the fused MMD kernels (csrc/mmd_kernel.h).
#pragma once

#include <cstdint>

namespace dk {
namespace mmd {

constexpr int kMaxLayers = 8;  // JMMD layers handled in one sweep
constexpr int kChunk = 256;    // columns of a tile row evaluated at once (scratch stays in L1)

// One kernel of a layer's bank, in evaluation order (ascending γ).  The first step always
// calls exp; later ones either call exp or square the previous value `squarings` times,
// because exp(−2^k γ d) = exp(−γ d)^(2^k).
template <typename T>
struct Step {
  int squarings;  // 0: evaluate exp(−gamma·d)
  T gamma;
  T count;   // how many kernels of the bank share this γ
  T gcount;  // gamma · count: this step's share of −k'(d)
};

// Read-only description of one sweep, shared by the worker threads.
template <typename T>
struct Context {
  int layers = 0;
  std::int64_t N = 0;  // rows of the concatenated batch
  std::int64_t n = 0;  // source rows (0 … n−1), target rows after
  const T* norms[kMaxLayers] = {};  // ‖c_i‖² of the centred rows, per layer
  const Step<T>* steps[kMaxLayers] = {};
  int num_steps[kMaxLayers] = {};
  double w[3] = {0.0, 0.0, 0.0};  // W for (source, source), (source, target), (target, target)
};

}  // namespace mmd
}  // namespace dk
