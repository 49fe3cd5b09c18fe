// CPU emulation of the small part of CUDA the adjoined kernels use, for checking their index logic,
// bounds and alignment on machines without a GPU (build: csrc/emu/build_emu.sh; driver:
// csrc/emu/check_emu.py). Each block runs as blockDim std::threads with a real barrier for
// __syncthreads, per-warp barriers for shuffles, and WMMA fragments held whole by every lane.
// Alignment rules of vector loads and WMMA pointers are asserted. Not part of adjoined_kernels._C.
#pragma once

#include <barrier>
#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

namespace emu {

struct Ctx {
  uint3 tid, bid;
  dim3 bdim, gdim;
};
inline thread_local Ctx tl;
inline std::barrier<>* g_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>>* g_warp_barriers = nullptr;
inline std::vector<unsigned char> g_shfl(1024 * 8 * 8);

inline unsigned linear_tid() { return tl.tid.x + tl.bdim.x * (tl.tid.y + tl.bdim.y * tl.tid.z); }

inline void syncthreads() { g_block_barrier->arrive_and_wait(); }

template <typename V>
V shfl_xor(unsigned mask, V v, int off) {
  (void)mask;
  static_assert(sizeof(V) <= 8, "shuffle of at most 8 bytes");
  const unsigned t = linear_tid(), lane = t & 31u, w = t >> 5;
  auto& bar = *(*g_warp_barriers)[w];
  V* slots = reinterpret_cast<V*>(g_shfl.data());
  slots[t] = v;
  bar.arrive_and_wait();
  const V r = slots[(w << 5) | (lane ^ static_cast<unsigned>(off))];
  bar.arrive_and_wait();
  return r;
}

// Run kernel(args...) over the grid: blocks in sequence, each as blockDim threads.
template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, Args&&... args) {
  const unsigned nt = block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || nt % 32 != 0) {
    std::fprintf(stderr, "emu: bad block size %u\n", nt);
    std::abort();
  }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar(nt);
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (unsigned w = 0; w < nt / 32; ++w) warps.emplace_back(new std::barrier<>(32));
        g_block_barrier = &bar;
        g_warp_barriers = &warps;
        std::vector<std::thread> threads;
        threads.reserve(nt);
        for (unsigned t = 0; t < nt; ++t) {
          threads.emplace_back([&, t] {
            tl.bdim = block;
            tl.gdim = grid;
            tl.bid = make_uint3(bx, by, bz);
            tl.tid = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            kernel(args...);
            bar.arrive_and_drop();  // an exited thread no longer holds up __syncthreads
          });
        }
        for (auto& th : threads) th.join();
      }
}

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void check_aligned(const void* p, unsigned bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
    std::fprintf(stderr, "emu: %s: pointer %p is not %u-byte aligned\n", what, p, bytes);
    std::abort();
  }
}

// ---- Dynamic shared memory: one buffer, sized by the launch (blocks run one after another).
inline std::vector<unsigned char> g_dyn_smem;
inline void set_dynamic_smem(size_t bytes) { g_dyn_smem.assign(bytes + 128, 0); }
inline unsigned char* dynamic_smem() {
  const uintptr_t p = reinterpret_cast<uintptr_t>(g_dyn_smem.data());
  return reinterpret_cast<unsigned char*>((p + 127) & ~uintptr_t{127});
}

// ---- cp.async (synchronous here, so commit/wait are no-ops), ldmatrix and mma.sync m16n8k16, with the
// PTX ISA's fragment layouts. The warp-collective ones exchange through per-lane slots between two
// per-warp barriers, as shfl_xor does.
inline void cp_async16(void* dst, const void* src, int src_bytes) {
  check_aligned(dst, 16, "cp.async shared destination");
  if (src_bytes != 0 && src_bytes != 16) { std::fprintf(stderr, "emu: cp.async src-size %d\n", src_bytes); std::abort(); }
  if (src_bytes) check_aligned(src, 16, "cp.async global source");
  std::memcpy(dst, src, src_bytes);
  std::memset(static_cast<unsigned char*>(dst) + src_bytes, 0, 16 - src_bytes);
}

inline const uint16_t* g_ldm_rows[1024];

inline void ldmatrix_x4(unsigned (&r)[4], const void* row, bool trans) {
  check_aligned(row, 16, "ldmatrix row");
  const unsigned t = linear_tid(), lane = t & 31u, w = t >> 5;
  auto& bar = *(*g_warp_barriers)[w];
  g_ldm_rows[t] = static_cast<const uint16_t*>(row);
  bar.arrive_and_wait();
  const uint16_t* const* rows = g_ldm_rows + (w << 5);
  for (unsigned j = 0; j < 4; ++j) {
    uint16_t lo, hi;
    if (!trans) {
      const uint16_t* rr = rows[8 * j + lane / 4];
      lo = rr[2 * (lane % 4)];
      hi = rr[2 * (lane % 4) + 1];
    } else {
      lo = rows[8 * j + 2 * (lane % 4)][lane / 4];
      hi = rows[8 * j + 2 * (lane % 4) + 1][lane / 4];
    }
    r[j] = static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
  }
  bar.arrive_and_wait();
}

template <typename T>
inline float b16_to_float(uint16_t bits) {
  T v;
  std::memcpy(&v, &bits, 2);
  return to_float(v);
}

struct MmaFrag {
  unsigned a[4], b[2];
};
inline MmaFrag g_mma[1024];

template <typename T>
inline void mma_16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  const unsigned t = linear_tid(), lane = t & 31u, w = t >> 5;
  auto& bar = *(*g_warp_barriers)[w];
  g_mma[t] = MmaFrag{{a[0], a[1], a[2], a[3]}, {b0, b1}};
  bar.arrive_and_wait();
  float A[16][16], B[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const MmaFrag& f = g_mma[(w << 5) | l];
    const unsigned g = l / 4, c = 2 * (l % 4);
    for (unsigned e = 0; e < 2; ++e) {
      auto half = [&](unsigned reg) { return b16_to_float<T>(static_cast<uint16_t>(reg >> (16 * e))); };
      A[g][c + e] = half(f.a[0]);
      A[g + 8][c + e] = half(f.a[1]);
      A[g][c + 8 + e] = half(f.a[2]);
      A[g + 8][c + 8 + e] = half(f.a[3]);
      B[c + e][g] = half(f.b[0]);
      B[c + 8 + e][g] = half(f.b[1]);
    }
  }
  const unsigned g = lane / 4, c = 2 * (lane % 4);
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i / 2), col = c + i % 2;
    float s = d[i];
    for (int k = 0; k < 16; ++k) s = std::fma(A[row][k], B[k][col], s);
    d[i] = s;
  }
  bar.arrive_and_wait();
}

}  // namespace emu

// ---- WMMA, held whole by every lane (each lane computes the same full tile).
namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  float v[16][16];  // matrix_a: [m][k], matrix_b: [k][n], accumulator: [m][n]
};

template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  emu::check_aligned(p, 32, "wmma::load_matrix_sync(a)");
  if (ldm % (16 / sizeof(T)) != 0) { std::fprintf(stderr, "emu: bad ldm %u\n", ldm); std::abort(); }
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k)
      f.v[i][k] = emu::to_float(std::is_same<L, row_major>::value ? p[i * ldm + k] : p[k * ldm + i]);
}

template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
  emu::check_aligned(p, 32, "wmma::load_matrix_sync(b)");
  if (ldm % (16 / sizeof(T)) != 0) { std::fprintf(stderr, "emu: bad ldm %u\n", ldm); std::abort(); }
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j)
      f.v[k][j] = emu::to_float(std::is_same<L, row_major>::value ? p[k * ldm + j] : p[j * ldm + k]);
}

inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
  for (auto& r : f.v)
    for (auto& e : r) e = x;
}

template <typename A, typename B>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const A& a, const B& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16][16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.v[i][j];
      for (int k = 0; k < 16; ++k) s = std::fma(a.v[i][k], b.v[k][j], s);
      out[i][j] = s;
    }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) d.v[i][j] = out[i][j];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
  emu::check_aligned(p, 32, "wmma::store_matrix_sync");
  if (ldm % 4 != 0) { std::fprintf(stderr, "emu: bad ldm %u\n", ldm); std::abort(); }
  // Lane 0 writes (every lane holds the same tile); the barrier that follows on the GPU orders it.
  if ((emu::linear_tid() & 31u) != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) (l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i][j];
}
}  // namespace wmma
}  // namespace nvcuda

// ---- CUDA keywords and builtins
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __grid_constant__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::emu::tl.tid)
#define blockIdx (::emu::tl.bid)
#define blockDim (::emu::tl.bdim)
#define gridDim (::emu::tl.gdim)
#define __syncthreads() ::emu::syncthreads()
#define __shfl_xor_sync(mask, v, off) ::emu::shfl_xor(mask, v, off)
#define __ldg(p) (*(p))
#define ADJ_ASSERT_ALIGNED16(p) ::emu::check_aligned((p), 16, "16-byte vector access")
using std::max;
using std::min;
