// Transparent huge pages for large, freshly allocated buffers (frames and bulk message vectors
// of the transport: 100s of MB allocated per message). glibc serves them with a fresh mmap, and
// with 4 KiB pages first touch costs one page fault (+ zeroing) per 4 KiB, which dominated the
// parameter-server transport (docs/benchmarks.md). Advising 2 MiB pages before the first touch
// cuts the faults ~500x where the kernel's THP mode is "madvise" (the Debian default); a no-op
// elsewhere and for small buffers.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ptrain {

inline void advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = 2u << 20;
  if (n < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
  if (end > begin) {
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // best effort
  }
#else
  (void)p;
  (void)n;
#endif
}

}  // namespace ptrain
