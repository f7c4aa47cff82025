// CUDA kernels of mambaad::scan_fwd / mambaad::scan_bwd: the fused multi-direction (HSS) and
// grouped (GSS) selective scan of MambaAD. Semantics: the kernel contract in the docstring of
// mambaad_kernels/fused.py, written out in plain PyTorch in tests/kernel_contract.py.
//
// Files: scan_fwd.cuh / scan_bwd.cuh (the kernels), scan_common.cuh (layout helpers),
// scan_host.h (checks, allocation, configuration choice, launches), device.cuh (the device
// primitives, also implemented by the CPU emulator emu.h that tests/test_cuda.py runs the kernel
// source on), this file (registration for the CUDA dispatch key).
//
// ================================================ DESIGN ================================================
// Notation: B batch, K directions, D channels (Dk per direction: D, or D / K for GSS), L = H W steps,
// N states (16), R dt rank (<= 32 in MambaAD: 32, 16, 8, 4 at the four decoder stages), C2 = R + 2N.
// Per (b, k, d) the scan runs over t = 0 .. L-1 reading grid position p = paths[k, t]:
//   u = x[b, ch, p], (dt, B, C) = x_dbl[b, k, :, p], delta = softplus(dt_w[k, d] . dt + dt_b[k, d]),
//   h = exp(delta A) h + delta B u (fp32 state, per n), y = C . h + D u, out[b, ch, p] += y.
//
// 1. The in-chunk scan (both kernels), mamba_ssm's scheme with fp32 state. A channel's sequence is
//    cut into chunks of CH = LPC x TI steps: LPC lanes of one warp ("a channel segment") hold TI
//    consecutive steps each. For each state n (outer loop, so only TI-long arrays live in
//    registers): each lane computes its decays a_t = 2^(delta_t A_n log2 e) (one MUFU.EX2 per
//    (t, n): the only transcendental of the inner loop) and inputs delta_t u_t B_t[n], folds them
//    into the pair (P, S) = (product of its decays, state after its steps from 0) (P as one ex2 of
//    A_n x (sum of the lane's deltas): no product chain), scans the pairs across the segment with
//    log2(LPC) shuffle steps ((P1, S1) then (P2, S2) is (P1 P2, P2 S1 + S2)), applies the carried
//    state of the chunk, and replays its TI steps to get every h_t (y_t += C_t[n] h_t). The carry
//    for the next chunk is the segment's last state; the lane starting a multiple of the
//    checkpoint interval (128 steps) stores its incoming state into `states`.
//    Cost per (t, n): FMUL + EX2 (decay), FMUL (input), FFMA (fold), FFMA (replay), FFMA (y) and
//    half a 16-byte shared load (B and C rows, 4 steps per load), plus the segment scan
//    (~5 instructions per level per n per lane, amortised over TI steps).
// 2. delta inside the kernel: the R dt rows of the chunk are staged with B and C; each lane forms
//    z = dt_b + sum_r dt_w[r] dt_t[r] for its TI steps (R FFMAs per step, the channel's dt_w row
//    in shared memory) and delta = softplus(z) = max(z, 0) + log1p(exp(-|z|)) from one EX2 and
//    hss_math.h's log1p_unit (accurate for small delta, where log(1 + e^z) in fp32 is not; the
//    backward takes sigmoid(z) from the same exponential).
// 3. The gather without a gathered copy: per chunk, the block stages into shared memory the path
//    indices of its CH steps, the C2 rows of x_dbl at those positions and x (forward) or dout
//    (backward) of its channels, each element read straight from its original grid position
//    (x_dbl[b, k, r, paths[k, t]]). Consecutive threads take consecutive steps t; a Hilbert path
//    is local in 2-D (32 consecutive steps cover a 4 x 8 or 8 x 4 patch), so a warp's 32 reads of
//    one row touch 4 to 8 32-byte sectors instead of 32, and the other rows and channels hit the
//    same sectors in L1. With channels-last x / dout (stride_d == 1, no copy is made), the x
//    staging runs channels-fastest instead: consecutive threads read consecutive channels of one
//    position, fully coalesced. x_dbl (fp32, fp64 for fp64) and fp32 / fp64 x go through cp.async
//    (4 / 8 bytes, no register round trip); 16-bit x is converted to fp32 on the way. Rows are
//    padded by 4 floats every 32 so that a lane's 16-byte loads of its TI steps never conflict
//    (scan_common.cuh).
// 4. Forward mapping and the deterministic merge of the K directions. A block owns (b, a group of
//    G channels) and runs the K directions one after the other (GSS: its group's one direction),
//    so every out element is accumulated by one block in the order k = 0 .. K-1: no atomics, no
//    (B, K, D, L) buffer, bit-identical run to run. The accumulator is the block's (G, L) slice in
//    shared memory when it fits (64 KB), else out itself (fp32) or an fp32 workspace (16-bit out),
//    written back converted at the end. Chunks are double-buffered: chunk i+1 is staged with
//    cp.async while chunk i is scanned (3 barriers per chunk). The y of a chunk is written over its
//    x in shared memory and merged with lanes along consecutive steps (a compact grid patch); with the
//    accumulator in global memory a thread reads 4 elements before writing them back (4 reads in
//    flight instead of one read-modify-write at a time).
//    Configurations (NW warps, LPC, TI -> G = 32 NW / LPC channels, CH steps):
//      L <= 64:  <16, 4, 16>  G 128, CH 64     64 < L <= 128: <16, 8, 16>  G 64, CH 128
//      L > 128:  <16, 16, 16> G 32,  CH 256 while it gives at least 0.9 blocks per SM and
//                its (32, L) accumulator fits the 64 KB of shared memory (L <= 512), else
//                <16, 32, 8>  G 16,  CH 256    fallback (big N, fp64): <4, 8, 8>  G 16, CH 64
//    (benchmarks/dev/kernel_census.py, sm_90 SASS: 9.1, 9.3, 9.6 and 12.6 instructions per (t, n)
//    step; the fewer lanes per channel, the fewer shuffle levels per step.)
//    At B = 16 and MambaAD's stages that is 128, 256, 256, 128 blocks of 512 threads (one per SM,
//    16 warps, 65536 .. 131072 lanes in flight).
// 5. Backward mapping. A block owns (b, k, a group of G = 64 channels) (<16, 8, 16>: CH = 128 =
//    the checkpoint interval; for L <= 64, <16, 8, 8>: one 64-step chunk, so no lane walks masked
//    steps, and 124 registers without the spills of the 128-step one) and walks the chunks from
//    last to first. Per chunk it recomputes the
//    forward states from the chunk's checkpoint (scan 1 above), then the reverse recurrence
//    dh_t = g_t C_t + a_{t+1} dh_{t+1} with the same segment scheme run right to left (a lane maps
//    the value entering from its right, a dh of the next step, to its own outgoing one; the
//    carry between chunks is kept per (channel, n) in shared memory), and accumulates per step
//    du, d delta, per state dB, dC and per (channel, n) dA. No (B, K, D, L, N) tensor exists: the
//    states live one chunk at a time in registers. The decays are recomputed in the reverse pass
//    (an extra EX2 per (t, n), cheaper than the registers to keep them: the backward is bound by
//    its ~25 FP instructions per (t, n), not by MUFU).
//    Reductions, all in a fixed order:
//      - dB_t[n], dC_t[n] (shared by the channels of a direction): per n every lane writes its
//        per-step values to shared memory; after a barrier the block sums the G channels (pairs of
//        threads split the channels, one shuffle joins them) and writes x_dbl's gradient rows at
//        the original grid positions. With Dk > 64 the channel groups write one slice each
//        ((NG, B, K, C2, L)), summed in group order by the final reduction kernel.
//      - d dt_t[r] = sum_d dz_t[d] dt_w[d, r] and d dt_w[d, r] += sum_t dz_t[d] dt_t[r]: from dz
//        staged in shared memory after the state loop (d dt_w accumulated over chunks there).
//      - dx = sum over k of du: HSS writes one (B, D, L) slice per direction, summed in k order by
//        the final reduction (GSS and K = 1 write dx directly).
//      - d dt_b, dD, dA_logs: per lane, then the lanes of a channel (shuffles), then one slice per
//        batch element summed in b order by the final reduction.
//    deterministic=False replaces the two slice buffers with atomicAdd into zeroed outputs.
// 6. Indices: every global offset is int64 (B D L passes 2^31 at large shapes); steps and grid
//    positions are int (L < 2^30 is checked); a path entry outside [0, L) is treated as a masked
//    step, so a malformed path cannot read or write out of bounds.
// 7. The lane-sequential forward (scan_lanes.cuh; experimental, chosen by MAMBAAD_CUDA_FWD=lanes
//    for N = 16 and fp32 / fp16 / bf16, forced by config 2 in the emulator tests). A block owns
//    (b, k, 128 channels), one thread per channel, and walks the sequence in 32-step chunks staged
//    as in 3 (double-buffered, 3 barriers per chunk). Each thread keeps its 16 states and A_n
//    log2(e) in registers and runs the recurrence step by step, 4 steps at a time: delta from the
//    staged dt rows (dt_w in shared memory, odd row stride), then per state n one 16-byte
//    broadcast load each of B_n and C_n for the 4 steps and 4 x (EX2, state update, C
//    contraction). No segment scan, no shuffles: 9.9 instructions per (t, n) step against 9.1 ..
//    12.6 for the segment kernels (benchmarks/dev/kernel_census.py, sm_90 SASS; the dt projection
//    adds a little more per unit of R), with 16 independent state chains per thread instead of
//    the segment scan's dependency chain through shuffles and shared memory, but few warps
//    (B K D lanes: 16384 at stage 3 and B 16, 4 warps per SM). The cost: the K directions run in
//    different blocks, so HSS with K > 1 writes one fp32 (B, D, L) slice per direction and
//    sum_slices_kernel adds them in k order (deterministic; K + 1 times the output's memory,
//    2 K B D L x 4 bytes of extra traffic: 0.18 ms at 3 TB/s at stage 3, computed). 16-bit outputs
//    go through an fp32 buffer. The checkpoints for the backward are the same (the state before
//    every 128th step), so the backward is unchanged.
//
// Floors at MambaAD's decoder stages (B 16, N 16, K 8, fp32, R = D / 32). Assumed H100 SXM: 132 SMs
// at 1.755 GHz, MUFU 16 ex2 per SM per clock = 3.71e12 exp/s; HBM 3.0 TB/s. Bytes that must move:
// x read + out written (B D L fp32 each) + x_dbl read (B K (R + 2N) L fp32); this design also writes
// the checkpoints (B K D ceil(L / 128) N fp32), in brackets.
//  stage D     H x W  R   exps B K D L N  exp floor  x + out + x_dbl (+ states)      byte floor
//  0     1024  8 x 8  32  134.2 M         36.2 us    4.2 + 4.2 + 2.1 (+ 8.4) MB      3.5 (6.3) us
//  1     512   16x16  16  268.4 M         72.4 us    8.4 + 8.4 + 6.3 (+ 8.4) MB      7.7 (10.5) us
//  2     256   32x32  8   536.9 M         144.8 us   16.8 + 16.8 + 21.0 (+ 16.8) MB  18.2 (23.8) us
//  3     128   64x64  4   1073.7 M        289.7 us   33.6 + 33.6 + 75.5 (+ 33.6) MB  47.6 (58.7) us
// Every stage is bound by the exponentials: one EX2 per (b, k, d, t, n) is the floor the forward is
// built around (the backward evaluates two per (t, n) and ~25 FP instructions).
// ========================================================================================================

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "scan_host.h"

namespace mambaad {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> scan_fwd(const at::Tensor& x, const at::Tensor& x_dbl,
                                            const at::Tensor& dt_w, const at::Tensor& dt_b,
                                            const at::Tensor& A_logs, const at::Tensor& Ds,
                                            const at::Tensor& paths, bool grouped, bool deterministic) {
  TORCH_CHECK_VALUE(x.is_cuda(), "mambaad::scan_fwd (cuda): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  return scan::scan_fwd_impl(x, x_dbl, dt_w, dt_b, A_logs, Ds, paths, grouped, deterministic,
                             at::kCUDA);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& dout, const at::Tensor& x, const at::Tensor& x_dbl, const at::Tensor& states,
    const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A_logs, const at::Tensor& Ds,
    const at::Tensor& paths, bool grouped, bool deterministic) {
  TORCH_CHECK_VALUE(x.is_cuda(), "mambaad::scan_bwd (cuda): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  return scan::scan_bwd_impl(dout, x, x_dbl, states, dt_w, dt_b, A_logs, Ds, paths, grouped,
                             deterministic, at::kCUDA);
}

}  // namespace cuda
}  // namespace mambaad

TORCH_LIBRARY_IMPL(mambaad, CUDA, m) {
  m.impl("scan_fwd", &mambaad::cuda::scan_fwd);
  m.impl("scan_bwd", &mambaad::cuda::scan_bwd);
}
