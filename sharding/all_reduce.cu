// A one-shot all-reduce over NVLink peer memory, for the small sums of tensor-parallel decoding.
//
// Built by sharding/all_reduce.py with nvcc and called through XLA's FFI from a shard_map.
// One process drives every GPU of a group. Each device has a workspace (chimera_all_reduce_init):
//   lines  [2 slots][kMaxRanks][kSlotBytes * 2]  what each peer pushed, as 16-byte lines
//   epochs [kMaxBlocks] uint32                    how many calls block b has made on this device
// A call of block b on rank r has epoch e = epochs[b] + 1. Each thread pushes its 16 bytes of the
// partial sum to every peer's lines[e & 1][r] as two lines {4 data bytes, e, 4 data bytes, e} (the
// flags NCCL's LL protocol uses: a 16-byte store lands as two 8-byte halves, each whole, so a line
// whose two flags read e holds this call's data; no fence, no separate flag). It then waits for its
// 16 bytes from every peer in its own lines[e & 1] and adds all ranks' values in rank order (every
// rank adds the same values in the same order: the replicated outputs agree bit for bit). Two slots
// suffice: a peer pushes epoch e + 2 into slot e & 1 only after reading our epoch e + 1, which we push
// in a later call, after this one has read the slot. The epoch lives on the device, so the kernel
// can be replayed from a CUDA graph (its arguments never change). Every rank of a group must make
// the same calls in the same order, as the ranks of one SPMD program do, and calls must not run
// concurrently on a device (the decode step's sums are a chain: each feeds the next).
//
// add_rms_norm_kernel is the same sum for a block's output that the residual stream takes next, fused
// with what follows it there: new residual = residual + sum (rounded to T as XLA rounds each step), and
// its RMS norm times the weight. One thread block a row; the rows' lines and epochs have their own
// part of the workspace (norm_lines, norm_epochs: row r always at the same place, so a location's
// flags only ever come from row r's calls). `normed` may have rows of zeros after the rows, which the
// kernel writes too: the zero row runtime/linear.py multiplies a one-row product with (XLA would
// otherwise pad the custom call's output in a kernel of its own). The partial may also be a one-row
// product's float32 K-splits (sharding/residual.py), which the kernel sums in place of XLA's reduction
// kernel after a split-K GEMM; a row is then a cluster of kSplitParts blocks that share the sum of squares.
#include <cstdint>
#include <cstdio>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

constexpr int kMaxRanks = 8;
constexpr int kMaxParts = 8;    // blocks a row of add_rms_norm_kernel, at most (a portable cluster's most)
constexpr int kSplitParts = 4;  // blocks a row when the partial is K-splits
constexpr int kMaxDevices = 64;
constexpr int kThreads = 256;  // all_reduce_kernel's threads a block
constexpr int kBlockBytes = kThreads * 16;  // 16 bytes of the message a thread
constexpr int kMaxBlocks = 64;
constexpr size_t kSlotBytes = size_t(kMaxBlocks) * kBlockBytes;  // the largest message: 256 KB
constexpr size_t kLinesOffset = 0;
constexpr size_t kLinesBytes = 2 * kMaxRanks * 2 * kSlotBytes;   // lines carry as many flag bytes as data
constexpr size_t kEpochsOffset = kLinesOffset + kLinesBytes;
constexpr int kMaxRows = 64;                 // rows a call of add_rms_norm_kernel, at most
constexpr int kRowBytes = 16384;             // bytes a row, at most (8192 bfloat16 or 4096 float32 values)
constexpr int kNormThreads = kRowBytes / 16;  // add_rms_norm_kernel's threads a block: a line of a row each
constexpr size_t kRowsBytes = size_t(kMaxRows) * kRowBytes;
constexpr size_t kNormLinesOffset = kEpochsOffset + kMaxBlocks * sizeof(uint32_t);
constexpr size_t kNormLinesBytes = 2 * kMaxRanks * 2 * kRowsBytes;
constexpr size_t kNormEpochsOffset = kNormLinesOffset + kNormLinesBytes;
constexpr size_t kWorkspaceBytes = kNormEpochsOffset + kMaxRows * sizeof(uint32_t);

static char* g_workspace[kMaxDevices] = {};  // by CUDA device ordinal
static char g_error[512];

// The group's workspaces, by rank. The kernels take it as a __grid_constant__ parameter: indexed by a rank
// known at run time only, a by-value parameter is first copied to local memory by every thread (a 64-byte
// stack frame; 0.7 µs of each fused call on 2 H200s, BENCHMARKS.md session 15).
struct Peers {
  char* workspace[kMaxRanks];
};

__device__ __forceinline__ void store_line(char* address, uint32_t first, uint32_t second, uint32_t flag) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(first), "r"(flag),
               "r"(second), "r"(flag)
               : "memory");
}

// The 16 data bytes of the two lines at `address` once all four flags read `flag`. Both lines are loaded in
// each round: waiting for one and then the other would cost a second round trip to L2 (BENCHMARKS.md, session 18).
__device__ __forceinline__ uint4 wait_lines(const char* address, uint32_t flag) {
  uint32_t a, a_flag, b, b_flag, c, c_flag, d, d_flag;
  do {
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a), "=r"(a_flag), "=r"(b), "=r"(b_flag)
                 : "l"(address)
                 : "memory");
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(c), "=r"(c_flag), "=r"(d), "=r"(d_flag)
                 : "l"(address + 16)
                 : "memory");
  } while (a_flag != flag || b_flag != flag || c_flag != flag || d_flag != flag);
  return make_uint4(a, b, c, d);
}

__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(float value) { return value; }

template <typename T>
__device__ __forceinline__ T from_float(float value);
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float value) { return __float2bfloat16(value); }
template <>
__device__ __forceinline__ __half from_float(float value) { return __float2half(value); }
template <>
__device__ __forceinline__ float from_float(float value) { return value; }

// sums[i] += the i-th value of type T in 16 packed bytes
template <typename T>
__device__ __forceinline__ void add(float* sums, uint4 packed) {
  const T* values = reinterpret_cast<const T*>(&packed);
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) sums[i] += to_float(values[i]);
}

template <typename T>
__device__ __forceinline__ uint4 pack(const float* sums) {
  uint4 packed;
  T* values = reinterpret_cast<T*>(&packed);
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) values[i] = from_float<T>(sums[i]);
  return packed;
}

template <typename T>
__device__ __forceinline__ void unpack(float* values, uint4 packed) {
  const T* typed = reinterpret_cast<const T*>(&packed);
#pragma unroll
  for (int i = 0; i < int(16 / sizeof(T)); ++i) values[i] = to_float(typed[i]);
}

// Launched as a programmatic dependent (see launch below): wait for the kernel before to finish, then
// let the one after start its launch while this one runs.
__device__ __forceinline__ void follow_previous_kernel() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// The sum of `value` over the block (whole warps), the same bits in every thread.
__device__ __forceinline__ float block_sum(float value) {
  __shared__ float warp_sums[kNormThreads / 32];
#pragma unroll
  for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) value += __shfl_xor_sync(0xffffffffu, value, lane_mask);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  float total = 0.f;
  for (int warp = 0; warp < int(blockDim.x / 32); ++warp) total += warp_sums[warp];
  return total;
}

// The two lines that carry the 16 bytes at `place` of rank `source`'s message in `workspace`'s area at
// `area`: [2 slots][kMaxRanks][message_bytes * 2] (lines carry as many flag bytes as data).
__device__ __forceinline__ char* lines_at(char* workspace, size_t area, size_t message_bytes, uint32_t epoch,
                                          int source, size_t place) {
  return workspace + area + ((epoch & 1) * kMaxRanks + source) * 2 * message_bytes + 2 * place;
}

// Sends `own`, this rank's 16 bytes at `place`, into every peer's area as two lines flagged `epoch`.
__device__ __forceinline__ void send(const Peers& peers, int rank, int n_ranks, size_t area, size_t message_bytes,
                                     uint32_t epoch, size_t place, uint4 own) {
#pragma unroll 1  // n_ranks is known at run time only: rolled, the loop keeps the code small
  for (int peer = 0; peer < n_ranks; ++peer) {
    if (peer == rank) continue;
    char* to = lines_at(peers.workspace[peer], area, message_bytes, epoch, rank, place);
    store_line(to, own.x, own.y, epoch);
    store_line(to + 16, own.z, own.w, epoch);
  }
}

// sums += every rank's 16 bytes at `place`, in rank order (`own` for this rank's), waiting for the peers'.
template <typename T>
__device__ __forceinline__ void gather(float* sums, const Peers& peers, int rank, int n_ranks, size_t area,
                                       size_t message_bytes, uint32_t epoch, size_t place, uint4 own) {
#pragma unroll 1  // as in send
  for (int source = 0; source < n_ranks; ++source) {
    uint4 packed = own;
    if (source != rank) {
      const char* from = lines_at(peers.workspace[rank], area, message_bytes, epoch, source, place);
      packed = wait_lines(from, epoch);
    }
    add<T>(sums, packed);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    all_reduce_kernel(const char* input, char* output, size_t n_bytes, const __grid_constant__ Peers peers, int rank,
                      int n_ranks) {
  follow_previous_kernel();
  uint32_t* epochs = reinterpret_cast<uint32_t*>(peers.workspace[rank] + kEpochsOffset);
  const uint32_t epoch = *reinterpret_cast<volatile uint32_t*>(epochs + blockIdx.x) + 1;
  const size_t offset = size_t(blockIdx.x) * kBlockBytes + threadIdx.x * 16;  // in the message
  if (offset < n_bytes) {
    const uint4 own = *reinterpret_cast<const uint4*>(input + offset);
    send(peers, rank, n_ranks, kLinesOffset, kSlotBytes, epoch, offset, own);
    float sums[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    gather<T>(sums, peers, rank, n_ranks, kLinesOffset, kSlotBytes, epoch, offset, own);
    *reinterpret_cast<uint4*>(output + offset) = pack<T>(sums);
  }
  if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
}

// The 16 bytes of T at byte `at` of a partial that is `splits` arrays of P, split_bytes apart (a product's
// K-splits): their values summed in split order in float32, rounded to T.
template <typename T, typename P>
__device__ __forceinline__ uint4 sum_splits(const char* partial, int splits, size_t split_bytes, size_t at) {
  constexpr int kLoads = sizeof(P) / sizeof(T);  // 16-byte loads of P for 16 bytes of T
  constexpr int kRound = 4;                      // splits loaded at once: their loads in flight together
  float sums[16 / sizeof(T)] = {};
  for (int first = 0; first < splits; first += kRound) {
    uint4 loaded[kRound][kLoads];
#pragma unroll
    for (int s = 0; s < kRound; ++s) {
#pragma unroll
      for (int load = 0; load < kLoads; ++load) {
        if (first + s < splits) {
          loaded[s][load] = *reinterpret_cast<const uint4*>(partial + (first + s) * split_bytes + at * kLoads + load * 16);
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kRound; ++s) {
#pragma unroll
      for (int load = 0; load < kLoads; ++load) {
        if (first + s < splits) add<P>(sums + load * (16 / int(sizeof(P))), loaded[s][load]);
      }
    }
  }
  return pack<T>(sums);
}

#if __CUDA_ARCH__ >= 900
// A row's blocks (one cluster) add their sums of squares. Block p pushes its sum into slot p of every block's
// `totals` (st.async into distributed shared memory), which each block's transaction barrier counts; each then
// waits on its own barrier and adds the slots in part order (the same bits in every block). A cluster barrier in
// its place took ~0.8 µs more a call (BENCHMARKS.md, session 18): its release is a GPU-wide fence, which waits
// for every store the block has made before, the new residual's and the lines sent to the peers included.
// No block leaves while another may still push to it: each waits for every part's push before it goes on.
struct PartTotals {
  uint64_t arrived;  // mbarrier: one arrival (thread 0's) and parts * 4 bytes
  float totals[kMaxParts];
};

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// At the kernel's start: the barrier initialised before any block of the cluster may push to it.
__device__ __forceinline__ void open_part_totals(PartTotals& shared) {
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(&shared.arrived)) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

// The sum of the parts' `total`s in part order, the same bits in every block of the cluster.
__device__ __forceinline__ float add_part_totals(PartTotals& shared, float total, int part, int parts) {
  asm volatile("barrier.cluster.wait.aligned;" ::: "memory");  // every block's barrier is initialised
  const uint32_t arrived = shared_address(&shared.arrived);
  if (threadIdx.x == 0) {
    asm volatile("{ .reg .b64 state; mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 state, [%0], %1; }"
                 ::"r"(arrived), "r"(parts * 4) : "memory");
  }
  if (int(threadIdx.x) < parts) {  // thread i pushes this block's total to block i
    uint32_t slot, barrier;
    const uint32_t own_slot = shared_address(&shared.totals[part]);
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(slot) : "r"(own_slot), "r"(threadIdx.x));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(barrier) : "r"(arrived), "r"(threadIdx.x));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
                 ::"r"(slot), "r"(__float_as_uint(total)), "r"(barrier) : "memory");
  }
  uint32_t done = 0;
  do {
    asm volatile("{ .reg .pred complete; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 complete, [%1], 0;"
                 " selp.u32 %0, 1, 0, complete; }"
                 : "=r"(done) : "r"(arrived) : "memory");
  } while (!done);
  float sum = 0.f;
  for (int other = 0; other < parts; ++other) sum += reinterpret_cast<volatile float*>(shared.totals)[other];
  return sum;
}
#endif

// Row blockIdx.x / parts of [rows, row_bytes / sizeof(T)]: residual + the group's sum of `partial`, and its RMS
// norm times `weight`, each step rounded to T as XLA rounds it (runtime/norm.py's rms_norm); and zeros in
// normed's rows rows + row, 2 rows + row, ... below normed_rows. A row is `parts` blocks (a thread block
// cluster on Hopper: the row's sum of squares is gathered through their shared memory), a thread a 16-byte
// line of the row. This rank's partial is `splits` arrays of P (`sum_splits`), or with one split of T the
// array itself. Its latency is the call's cost: it runs once between two GEMMs.
template <typename T, typename P>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(const char* partial, int splits, size_t split_bytes, const char* residual, const char* weight,
                        char* new_residual, char* normed, int normed_rows, int row_bytes, float eps, int parts,
                        const __grid_constant__ Peers peers, int rank, int n_ranks) {
  constexpr int kPerLine = 16 / sizeof(T);
  const int row = blockIdx.x / parts, part = blockIdx.x % parts, rows = gridDim.x / parts;
  const int row_lines = row_bytes / 16, part_lines = (row_lines + parts - 1) / parts;
  const int line = part * part_lines + threadIdx.x;
  const bool has_line = int(threadIdx.x) < part_lines && line < row_lines;
  const int offset = line * 16;                           // in the row
  const size_t at = size_t(row) * row_bytes + offset;     // in the arrays
  const size_t place = size_t(row) * kRowBytes + offset;  // in the workspace's messages
  // Every load is issued before the first wait: each one's latency would otherwise add to the call's.
  // The weight is a parameter, which no kernel writes: it is read before the kernel before has finished.
  uint4 weights = {}, own = {}, before = {};
  if (has_line) weights = *reinterpret_cast<const uint4*>(weight + offset);
#if __CUDA_ARCH__ >= 900
  __shared__ PartTotals part_totals;
  if (parts > 1) open_part_totals(part_totals);
#endif
  follow_previous_kernel();
  uint32_t* epochs = reinterpret_cast<uint32_t*>(peers.workspace[rank] + kNormEpochsOffset);
  const uint32_t epoch = *reinterpret_cast<volatile uint32_t*>(epochs + row) + 1;
  if (has_line) {
    own = splits == 1 && sizeof(P) == sizeof(T) ? *reinterpret_cast<const uint4*>(partial + at)
                                                : sum_splits<T, P>(partial, splits, split_bytes, at);
    before = *reinterpret_cast<const uint4*>(residual + at);
    send(peers, rank, n_ranks, kNormLinesOffset, kRowsBytes, epoch, place, own);
  }
  float values[kPerLine] = {};  // the new residual's, rounded to T; zeros past the row
  float squares = 0.f;
  if (has_line) {
    float sums[kPerLine] = {};
    gather<T>(sums, peers, rank, n_ranks, kNormLinesOffset, kRowsBytes, epoch, place, own);
    float residual_values[kPerLine];
    unpack<T>(values, pack<T>(sums));  // the block's output, rounded to T
    unpack<T>(residual_values, before);
#pragma unroll
    for (int i = 0; i < kPerLine; ++i) values[i] += residual_values[i];
    const uint4 added = pack<T>(values);
    *reinterpret_cast<uint4*>(new_residual + at) = added;
    unpack<T>(values, added);
#pragma unroll
    for (int i = 0; i < kPerLine; ++i) squares += values[i] * values[i];
  }
  float total = block_sum(squares);
#if __CUDA_ARCH__ >= 900
  if (parts > 1) total = add_part_totals(part_totals, total, part, parts);
#endif
  const float scale = rsqrtf(total / float(row_bytes / int(sizeof(T))) + eps);
  if (has_line) {
    float scaled[kPerLine], weight_values[kPerLine];
#pragma unroll
    for (int i = 0; i < kPerLine; ++i) scaled[i] = values[i] * scale;
    unpack<T>(scaled, pack<T>(scaled));  // normalised, rounded to T, then times the weight
    unpack<T>(weight_values, weights);
#pragma unroll
    for (int i = 0; i < kPerLine; ++i) scaled[i] *= weight_values[i];
    *reinterpret_cast<uint4*>(normed + at) = pack<T>(scaled);
    for (int zero_row = row + rows; zero_row < normed_rows; zero_row += rows) {
      *reinterpret_cast<uint4*>(normed + size_t(zero_row) * row_bytes + offset) = make_uint4(0, 0, 0, 0);
    }
  }
  if (threadIdx.x == 0 && part == 0) {  // every part has read the epoch: each pushed its sum after its gather
    epochs[row] = epoch;
  }
}

extern "C" {

// Allocates and zeroes the workspace of each listed device (once) and lets every pair of them reach
// each other's memory. Returns NULL, or what failed.
const char* chimera_all_reduce_init(const int* ordinals, int n_devices) {
  int previous = 0;
  cudaGetDevice(&previous);
  for (int i = 0; i < n_devices; ++i) {
    const int device = ordinals[i];
    if (device < 0 || device >= kMaxDevices) {
      snprintf(g_error, sizeof g_error, "device ordinal %d is outside [0, %d)", device, kMaxDevices);
      return g_error;
    }
    cudaError_t status = cudaSetDevice(device);
    if (status == cudaSuccess && g_workspace[device] == nullptr) {
      void* workspace = nullptr;
      status = cudaMalloc(&workspace, kWorkspaceBytes);
      if (status == cudaSuccess) status = cudaMemset(workspace, 0, kWorkspaceBytes);
      if (status == cudaSuccess) status = cudaDeviceSynchronize();
      if (status == cudaSuccess) g_workspace[device] = static_cast<char*>(workspace);
    }
    // load the kernels now: lazy loading inside a CUDA graph capture is not allowed
    cudaFuncAttributes attributes;
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, all_reduce_kernel<__nv_bfloat16>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, all_reduce_kernel<__half>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, all_reduce_kernel<float>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, add_rms_norm_kernel<__nv_bfloat16, __nv_bfloat16>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, add_rms_norm_kernel<__nv_bfloat16, float>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, add_rms_norm_kernel<__half, __half>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, add_rms_norm_kernel<__half, float>);
    if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, add_rms_norm_kernel<float, float>);
    for (int j = 0; status == cudaSuccess && j < n_devices; ++j) {
      if (ordinals[j] == device) continue;
      int can_access = 0;
      status = cudaDeviceCanAccessPeer(&can_access, device, ordinals[j]);
      if (status == cudaSuccess && !can_access) {
        snprintf(g_error, sizeof g_error, "device %d cannot access device %d's memory", device, ordinals[j]);
        cudaSetDevice(previous);
        return g_error;
      }
      if (status == cudaSuccess) status = cudaDeviceEnablePeerAccess(ordinals[j], 0);
      if (status == cudaErrorPeerAccessAlreadyEnabled) {
        cudaGetLastError();  // clear it
        status = cudaSuccess;
      }
    }
    if (status != cudaSuccess) {
      snprintf(g_error, sizeof g_error, "device %d: %s", device, cudaGetErrorString(status));
      cudaSetDevice(previous);
      return g_error;
    }
  }
  cudaSetDevice(previous);
  return nullptr;
}

int chimera_all_reduce_max_bytes() { return static_cast<int>(kSlotBytes); }
int chimera_all_reduce_max_ranks() { return kMaxRanks; }
int chimera_all_reduce_max_rows() { return kMaxRows; }
int chimera_all_reduce_max_row_bytes() { return kRowBytes; }

}  // extern "C"

// groups: every group's device ordinals, [n_groups * group_size]; this device's group is the one
// that holds its ordinal, and its rank the position there.
static ffi::Error find_peers(int32_t device, ffi::Span<const int64_t> groups, int64_t group_size, Peers* peers,
                             int* rank) {
  if (group_size < 1 || group_size > kMaxRanks || groups.size() % group_size != 0) {
    return ffi::Error::InvalidArgument("bad group_size " + std::to_string(group_size));
  }
  int64_t start = -1;
  *rank = -1;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (groups[i] == device) {
      start = i - i % group_size;
      *rank = static_cast<int>(i % group_size);
    }
  }
  if (*rank < 0) return ffi::Error::InvalidArgument("device " + std::to_string(device) + " is in no group");
  for (int r = 0; r < group_size; ++r) {
    const int64_t ordinal = groups[start + r];
    if (ordinal < 0 || ordinal >= kMaxDevices || g_workspace[ordinal] == nullptr) {
      return ffi::Error::Internal("device " + std::to_string(ordinal) +
                                  " has no all-reduce workspace (chimera_all_reduce_init)");
    }
    peers->workspace[r] = g_workspace[ordinal];
  }
  return ffi::Error::Success();
}

// Launches kernel<<<blocks, threads>>>(args...) as a programmatic dependent (as XLA launches its own
// kernels): its start overlaps the end of the kernel before, which it waits for (griddepcontrol.wait)
// before reading anything. cluster > 1: blocks in clusters of that many (Hopper).
template <typename... Params, typename... Args>
static ffi::Error launch(cudaStream_t stream, int blocks, int threads, int cluster, void (*kernel)(Params...),
                         Args... args) {
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = 1;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = cluster;
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(threads);
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = cluster > 1 ? 2 : 1;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(status));
  return ffi::Error::Success();
}

static ffi::Error all_reduce(cudaStream_t stream, int32_t device, ffi::AnyBuffer input,
                             ffi::Result<ffi::AnyBuffer> output, ffi::Span<const int64_t> groups,
                             int64_t group_size) {
  const size_t n_bytes = input.size_bytes();
  if (n_bytes % 16 != 0 || n_bytes > kSlotBytes) {
    return ffi::Error::InvalidArgument("all-reduce of " + std::to_string(n_bytes) +
                                       " bytes: needs a multiple of 16 up to " + std::to_string(kSlotBytes));
  }
  Peers peers = {};
  int rank = 0;
  ffi::Error found = find_peers(device, groups, group_size, &peers, &rank);
  if (found.failure()) return found;
  const int blocks = static_cast<int>((n_bytes + kBlockBytes - 1) / kBlockBytes);
  const char* in = static_cast<const char*>(input.untyped_data());
  char* out = static_cast<char*>(output->untyped_data());
  const int n_ranks = static_cast<int>(group_size);
  switch (input.element_type()) {
    case ffi::DataType::BF16:
      return launch(stream, blocks, kThreads, 1, all_reduce_kernel<__nv_bfloat16>, in, out, n_bytes, peers, rank, n_ranks);
    case ffi::DataType::F16:
      return launch(stream, blocks, kThreads, 1, all_reduce_kernel<__half>, in, out, n_bytes, peers, rank, n_ranks);
    case ffi::DataType::F32:
      return launch(stream, blocks, kThreads, 1, all_reduce_kernel<float>, in, out, n_bytes, peers, rank, n_ranks);
    default:
      return ffi::Error::InvalidArgument("all-reduce: only bfloat16, float16 and float32");
  }
}

// partial: [splits, >= rows, D] of the type or float32; residual, new_residual: [rows, D]; normed: [rows + zero
// rows, D]; weight: [D]; all but partial of one type.
static ffi::Error add_rms_norm(cudaStream_t stream, int32_t device, ffi::AnyBuffer partial, ffi::AnyBuffer residual,
                               ffi::AnyBuffer weight, ffi::Result<ffi::AnyBuffer> new_residual,
                               ffi::Result<ffi::AnyBuffer> normed, ffi::Span<const int64_t> groups,
                               int64_t group_size, float eps, int64_t splits) {
  const ffi::DataType type = residual.element_type();
  const bool float_splits = partial.element_type() == ffi::DataType::F32 && type != ffi::DataType::F32;
  if ((partial.element_type() != type && !float_splits) || weight.element_type() != type) {
    return ffi::Error::InvalidArgument("add_rms_norm: residual and weight must share one type, partial that or "
                                       "float32");
  }
  const size_t row_bytes = weight.size_bytes(), n_bytes = residual.size_bytes();
  const size_t widening = float_splits ? 4 / ffi::ByteWidth(type) : 1;  // partial bytes a residual byte
  const size_t split_bytes = splits > 0 ? partial.size_bytes() / size_t(splits) : 0;
  if (splits < 1 || splits > 64 || partial.size_bytes() % size_t(splits) != 0 || split_bytes < n_bytes * widening ||
      (splits == 1 && split_bytes != n_bytes * widening)) {
    return ffi::Error::InvalidArgument("add_rms_norm: a partial of " + std::to_string(partial.size_bytes()) +
                                       " bytes is not " + std::to_string(splits) + " splits of the rows");
  }
  if (row_bytes == 0 || row_bytes % 16 != 0 || row_bytes > size_t(kRowBytes) ||
      n_bytes % row_bytes != 0 || n_bytes / row_bytes > size_t(kMaxRows)) {
    return ffi::Error::InvalidArgument("add_rms_norm: rows of " + std::to_string(row_bytes) + " bytes (a multiple "
                                       "of 16 up to " + std::to_string(kRowBytes) + "), " +
                                       std::to_string(n_bytes) + " bytes in all (up to " +
                                       std::to_string(kMaxRows) + " rows)");
  }
  const size_t normed_bytes = normed->size_bytes();
  if (new_residual->size_bytes() != n_bytes || normed_bytes < n_bytes || normed_bytes % row_bytes != 0 ||
      normed_bytes / row_bytes > size_t(INT32_MAX)) {
    return ffi::Error::InvalidArgument("add_rms_norm: the new residual must be the residual's shape, and normed "
                                       "its rows and rows of zeros after them (" + std::to_string(normed_bytes) +
                                       " bytes for rows of " + std::to_string(row_bytes) + ")");
  }
  Peers peers = {};
  int rank = 0;
  ffi::Error found = find_peers(device, groups, group_size, &peers, &rank);
  if (found.failure()) return found;
  int major = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  const int row_lines = static_cast<int>(row_bytes / 16);
  // K-splits are read by kSplitParts blocks a row (one SM reading 64 KB of them took 0.6 µs more, BENCHMARKS.md
  // session 16); one split by one block (a cluster cost more than it saved, session 17, with a cluster barrier)
  const int parts = splits > 1 && major >= 9 && row_lines >= kSplitParts ? kSplitParts : 1;
  const int part_lines = (row_lines + parts - 1) / parts, threads = (part_lines + 31) / 32 * 32;
  const int rows = static_cast<int>(n_bytes / row_bytes), blocks = rows * parts;
  const char* in = static_cast<const char*>(partial.untyped_data());
  const char* before = static_cast<const char*>(residual.untyped_data());
  const char* w = static_cast<const char*>(weight.untyped_data());
  char* after = static_cast<char*>(new_residual->untyped_data());
  char* out = static_cast<char*>(normed->untyped_data());
  const int bytes = static_cast<int>(row_bytes), n_ranks = static_cast<int>(group_size);
  const int normed_rows = static_cast<int>(normed_bytes / row_bytes), n_splits = static_cast<int>(splits);
#define CHIMERA_LAUNCH_NORM(T, P)                                                                                  \
  launch(stream, blocks, threads, parts, add_rms_norm_kernel<T, P>, in, n_splits, split_bytes, before, w, after, out, \
         normed_rows, bytes, eps, parts, peers, rank, n_ranks)
  switch (type) {
    case ffi::DataType::BF16:
      return float_splits ? CHIMERA_LAUNCH_NORM(__nv_bfloat16, float) : CHIMERA_LAUNCH_NORM(__nv_bfloat16, __nv_bfloat16);
    case ffi::DataType::F16:
      return float_splits ? CHIMERA_LAUNCH_NORM(__half, float) : CHIMERA_LAUNCH_NORM(__half, __half);
    case ffi::DataType::F32:
      return CHIMERA_LAUNCH_NORM(float, float);
    default:
      return ffi::Error::InvalidArgument("add_rms_norm: only bfloat16, float16 and float32");
  }
#undef CHIMERA_LAUNCH_NORM
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(chimera_all_reduce, all_reduce,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("groups")
                                  .Attr<int64_t>("group_size"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(chimera_add_rms_norm, add_rms_norm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::DeviceOrdinal>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("groups")
                                  .Attr<int64_t>("group_size")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("splits"),
                              {ffi::Traits::kCmdBufferCompatible});
