// A small process-wide pool of large received-frame buffers (TCP transport). A bulk frame is
// 100s of MB; allocating it fresh per frame costs a page fault and a zeroing pass per page
// (docs/benchmarks.md, "Parameter-server transport"). The TCP reader takes a buffer here, and
// Transport::receive() gives it back once the frame is decoded, so a server receiving W pushes
// (or a worker receiving pulls) of the same size per step reuses mapped memory.
// Thread-safe. Holds at most kMaxFrameBuffers buffers; only buffers of kMinPooledFrame bytes and
// up are kept, and only once the TCP reader has asked for one (in-process jobs keep nothing).
#pragma once

#include <cstddef>
#include <vector>

namespace ptrain::net {

inline constexpr size_t kMinPooledFrame = 8u << 20;
inline constexpr size_t kMaxFrameBuffers = 2;

// An empty vector with capacity >= `bytes` (a pooled one when one fits without wasting more
// than its size again, else a new reservation).
std::vector<std::byte> take_frame_buffer(size_t bytes);
// Returns a buffer for reuse (dropped when too small, the pool is full, or no reader uses it).
void give_frame_buffer(std::vector<std::byte>&& buf);

}  // namespace ptrain::net
