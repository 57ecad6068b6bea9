// The CPU backend: fp32, OpenBLAS sgemm for every matrix product — each product split into one
// output block per OpenMP thread, each block a single-threaded sgemm; attention's per-head products
// likewise, under an OpenMP loop over (batch, head) — and OpenMP-parallel fused loops for the rest.
// Reductions run in an order fixed by the shapes alone, so results are bitwise reproducible run
// to run for the same thread count (and, apart from OpenBLAS's own partitioning, across counts).
// Not a general tensor library; see worker/model/backend.hpp for the op contracts.
#pragma once

#include "worker/model/backend.hpp"

#include <memory>

namespace ptrain {

// threads: OpenMP/OpenBLAS threads used by this backend's ops; 0 = all cores.
// Sets OpenBLAS's process-wide thread count as a side effect.
std::unique_ptr<Backend> make_cpu_backend(int threads);

namespace cpu_detail {
// e^x in fp32 (Cephes-style range reduction + degree-6 polynomial, ≤ 2 ulp on [-87, 88];
// clamped outside). Exposed for tests.
float exp_approx(float x);
}  // namespace cpu_detail

}  // namespace ptrain
