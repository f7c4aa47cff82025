// A small CPU emulation of the CUDA execution model, to run the kernels of this directory on a
// machine without a GPU (tests/test_cuda.py builds csrc/cuda/emulate.cc with -DMAMBAAD_EMU).
//
// What it models: a grid of blocks run one after another; inside a block every thread is a fiber
// (ucontext) with its own stack; __syncthreads is a block barrier, warp shuffles and __syncwarp
// are warp collectives that every one of the 32 lanes must reach (full-mask use only, which is all
// the kernels do: a divergent collective is reported as an error, not silently resolved); dynamic
// shared memory is one buffer per block, poisoned with NaN bytes at block start; cp.async copies
// are queued per thread and performed only at cp.async.wait_group, so a read of staged data before
// the wait sees stale data, as it may on the GPU. Threads between two synchronisation points run
// in an order chosen per launch (forward, reverse or shuffled), so a missing barrier shows up as a
// difference between orders. Not modelled: concurrency between blocks, the memory model beyond
// barriers, timing. Shared-memory accesses are bounds-checked through checked_smem().
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace mambaad {
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

enum class State { Runnable, AtBarrier, AtWarpOp, Done };
enum class WarpOp { None, ShflIdx, ShflUp, ShflDown, ShflXor, Sync };

struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  long group;
};

struct Fiber {
  ucontext_t ctx{};
  char* stack = nullptr;
  unsigned tid = 0;
  State state = State::Runnable;
  WarpOp op = WarpOp::None;
  uint64_t value = 0;   // the bits offered to a shuffle
  int arg = 0;          // source lane, delta or lane mask
  int width = 32;
  uint64_t result = 0;
  long open_group = 0;  // cp.async group being filled
  std::vector<PendingCopy> pending;
};

enum class Order { Forward, Reverse, Shuffled };

struct Machine {
  static constexpr size_t kStackBytes = 512 * 1024;
  Dim3 grid, block, block_idx;
  std::vector<unsigned char> smem;
  std::vector<Fiber> fibers;
  ucontext_t scheduler{};
  Fiber* current = nullptr;
  std::function<void()> body;
  Order order = Order::Forward;
  std::mt19937 rng{12345};
  std::string error;
  long barriers = 0;
};

inline Machine& machine() {
  static Machine m;
  return m;
}

inline Fiber& self() { return *machine().current; }

inline void yield_to_scheduler() {
  Machine& m = machine();
  Fiber* f = m.current;
  swapcontext(&f->ctx, &m.scheduler);
}

inline void fail(const std::string& msg) {
  Machine& m = machine();
  if (m.error.empty()) m.error = msg;
  throw std::runtime_error(msg);
}

// --- built-in variables -------------------------------------------------------------------------
inline unsigned thread_x() { return self().tid; }
inline const Dim3& block_idx() { return machine().block_idx; }
inline const Dim3& block_dim() { return machine().block; }
inline const Dim3& grid_dim() { return machine().grid; }
inline unsigned char* shared_mem() { return machine().smem.data(); }
inline size_t shared_bytes() { return machine().smem.size(); }

// --- synchronisation ------------------------------------------------------------------------------
inline void syncthreads() {
  self().state = State::AtBarrier;
  yield_to_scheduler();
}

inline uint64_t warp_collective(WarpOp op, uint64_t value, int arg, int width) {
  Fiber& f = self();
  f.state = State::AtWarpOp;
  f.op = op;
  f.value = value;
  f.arg = arg;
  f.width = width;
  yield_to_scheduler();
  return f.result;
}

inline void syncwarp() { warp_collective(WarpOp::Sync, 0, 0, 32); }

template <typename V>
inline uint64_t to_bits(V v) {
  static_assert(sizeof(V) <= 8, "shuffle of a value wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(V));
  return bits;
}

template <typename V>
inline V from_bits(uint64_t bits) {
  V v;
  std::memcpy(&v, &bits, sizeof(V));
  return v;
}

template <typename V>
inline V shfl_idx(V v, int src, int width) {
  return from_bits<V>(warp_collective(WarpOp::ShflIdx, to_bits(v), src, width));
}
template <typename V>
inline V shfl_up(V v, int delta, int width) {
  return from_bits<V>(warp_collective(WarpOp::ShflUp, to_bits(v), delta, width));
}
template <typename V>
inline V shfl_down(V v, int delta, int width) {
  return from_bits<V>(warp_collective(WarpOp::ShflDown, to_bits(v), delta, width));
}
template <typename V>
inline V shfl_xor(V v, int mask, int width) {
  return from_bits<V>(warp_collective(WarpOp::ShflXor, to_bits(v), mask, width));
}

// --- cp.async ------------------------------------------------------------------------------------
inline void cp_async(void* dst, const void* src, int bytes) {
  Fiber& f = self();
  f.pending.push_back({dst, src, bytes, f.open_group});
}

inline void cp_async_commit() { self().open_group += 1; }

// Complete every committed group but the newest `keep`.
inline void cp_async_wait(int keep) {
  Fiber& f = self();
  const long limit = f.open_group - keep;  // groups < limit must be complete
  std::vector<PendingCopy> rest;
  for (const PendingCopy& c : f.pending) {
    if (c.group < limit) {
      std::memcpy(c.dst, c.src, c.bytes);
    } else {
      rest.push_back(c);
    }
  }
  f.pending.swap(rest);
}

// --- shared-memory bounds check -------------------------------------------------------------------
template <typename P>
inline P* checked_smem(P* ptr, size_t count = 1) {
  const unsigned char* lo = machine().smem.data();
  const unsigned char* hi = lo + machine().smem.size();
  const unsigned char* p = reinterpret_cast<const unsigned char*>(ptr);
  if (p < lo || p + sizeof(P) * count > hi) fail("shared memory access out of bounds");
  return ptr;
}

// --- the scheduler --------------------------------------------------------------------------------
inline void fiber_entry() {
  Machine& m = machine();
  try {
    m.body();
  } catch (const std::exception& e) {
    if (m.error.empty()) m.error = e.what();
  }
  Fiber* f = m.current;
  // Copies still queued at exit complete anyway on the GPU.
  for (const PendingCopy& c : f->pending) std::memcpy(c.dst, c.src, c.bytes);
  f->pending.clear();
  f->state = State::Done;
  swapcontext(&f->ctx, &m.scheduler);
}

inline void resolve_warp(Machine& m, size_t w) {
  Fiber* lanes = &m.fibers[w * 32];
  const WarpOp op = lanes[0].op;
  const int width = lanes[0].width;
  for (int l = 0; l < 32; ++l) {
    const Fiber& f = lanes[l];
    if (f.op != op || f.width != width) fail("divergent warp collective (different operations)");
    if ((op == WarpOp::ShflUp || op == WarpOp::ShflDown || op == WarpOp::ShflXor) && f.arg != lanes[0].arg)
      fail("warp shuffle with a per-lane delta or mask");
  }
  if (width < 1 || width > 32 || (width & (width - 1))) fail("shuffle width must be a power of two <= 32");
  for (int l = 0; l < 32; ++l) {
    Fiber& f = lanes[l];
    const int seg = l & ~(width - 1), pos = l & (width - 1);
    int src = l;
    switch (op) {
      case WarpOp::ShflIdx: src = seg + (f.arg & (width - 1)); break;
      case WarpOp::ShflUp: src = pos >= f.arg ? l - f.arg : l; break;
      case WarpOp::ShflDown: src = pos + f.arg < width ? l + f.arg : l; break;
      case WarpOp::ShflXor:
        src = l ^ f.arg;
        if ((src & ~(width - 1)) != seg) fail("shuffle xor leaves its segment");
        break;
      default: break;
    }
    f.result = lanes[src].value;
  }
  for (int l = 0; l < 32; ++l) {
    lanes[l].state = State::Runnable;
    lanes[l].op = WarpOp::None;
  }
}

inline void run_block(Machine& m) {
  const size_t n = m.block.x;
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = m.fibers[i];
    f.tid = static_cast<unsigned>(i);
    f.state = State::Runnable;
    f.op = WarpOp::None;
    f.open_group = 0;
    f.pending.clear();
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = Machine::kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  while (true) {
    if (m.order == Order::Reverse) {
      std::reverse(order.begin(), order.end());
    } else if (m.order == Order::Shuffled) {
      std::shuffle(order.begin(), order.end(), m.rng);
    }
    for (size_t i : order) {
      Fiber& f = m.fibers[i];
      if (f.state != State::Runnable) continue;
      m.current = &f;
      swapcontext(&m.scheduler, &f.ctx);
      if (!m.error.empty()) throw std::runtime_error(m.error);
    }
    // Everyone is blocked or done: resolve warp collectives first, then the block barrier.
    size_t done = 0, at_barrier = 0;
    bool progressed = false;
    for (size_t w = 0; w < n / 32; ++w) {
      bool all = true;
      for (int l = 0; l < 32; ++l) all = all && m.fibers[w * 32 + l].state == State::AtWarpOp;
      if (all) {
        resolve_warp(m, w);
        progressed = true;
      }
    }
    if (!m.error.empty()) throw std::runtime_error(m.error);
    if (progressed) continue;
    for (size_t i = 0; i < n; ++i) {
      done += m.fibers[i].state == State::Done;
      at_barrier += m.fibers[i].state == State::AtBarrier;
    }
    if (done == n) break;
    if (at_barrier == n) {
      for (size_t i = 0; i < n; ++i) m.fibers[i].state = State::Runnable;
      ++m.barriers;
      continue;
    }
    fail("deadlock: threads wait at different synchronisation points (" + std::to_string(at_barrier) +
         " at __syncthreads, " + std::to_string(done) + " exited, the rest at warp collectives)");
  }
}

// Run `body` as a kernel over grid x block threads with `smem_bytes` of dynamic shared memory.
inline void launch(Dim3 grid, Dim3 block, size_t smem_bytes, std::function<void()> body) {
  Machine& m = machine();
  if (block.y != 1 || block.z != 1 || block.x % 32 || block.x == 0 || block.x > 1024)
    throw std::runtime_error("emu: blocks must be 1-D with a multiple of 32 threads, at most 1024");
  m.grid = grid;
  m.block = block;
  m.body = std::move(body);
  m.error.clear();
  if (m.fibers.size() < block.x) {
    const size_t old = m.fibers.size();
    m.fibers.resize(block.x);
    for (size_t i = old; i < block.x; ++i) {
      m.fibers[i].stack = static_cast<char*>(std::malloc(Machine::kStackBytes));
      if (!m.fibers[i].stack) throw std::runtime_error("emu: out of memory for fiber stacks");
    }
  }
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        m.block_idx = Dim3{x, y, z};
        m.smem.assign(smem_bytes, 0xff);  // NaN bytes for float and double
        if (reinterpret_cast<uintptr_t>(m.smem.data()) % 16)
          throw std::runtime_error("emu: shared memory buffer not 16-byte aligned");
        run_block(m);
      }
    }
  }
  m.body = nullptr;
  m.current = nullptr;
}

inline void set_order(int order, unsigned seed) {
  Machine& m = machine();
  m.order = order == 0 ? Order::Forward : order == 1 ? Order::Reverse : Order::Shuffled;
  m.rng.seed(seed);
}

}  // namespace emu
}  // namespace mambaad
