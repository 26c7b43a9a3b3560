// OpenMP helpers that also compile without OpenMP (DAPKERNELS_NO_OPENMP=1 builds, Apple clang).
//
// Threading rule of the whole core: an entry point receives `threads` from Python
// (torch.get_num_threads(), i.e. torch.set_num_threads, else OMP_NUM_THREADS, else the core
// count), runs on one thread when its work is below a per-kernel threshold, and otherwise asks
// OpenMP for at most `threads`.  OpenMP may grant fewer (OMP_THREAD_LIMIT, OMP_DYNAMIC, a call
// from inside another parallel region): every region indexes its scratch by
// omp_get_thread_num() within what was allocated for `threads` and never assumes the size of
// the team it got.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace dk {

// Threads in the current team (1 outside a parallel region).
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace dk
