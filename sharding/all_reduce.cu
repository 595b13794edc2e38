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
#include <cstdint>
#include <cstdio>
#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

constexpr int kMaxRanks = 8;
constexpr int kMaxDevices = 64;
constexpr int kThreads = 256;
constexpr int kBlockBytes = kThreads * 16;  // 16 bytes of the message a thread
constexpr int kMaxBlocks = 64;
constexpr size_t kSlotBytes = size_t(kMaxBlocks) * kBlockBytes;  // the largest message: 256 KB
constexpr size_t kLinesBytes = 2 * kMaxRanks * 2 * kSlotBytes;   // lines carry as many flag bytes as data
constexpr size_t kEpochsOffset = kLinesBytes;
constexpr size_t kWorkspaceBytes = kEpochsOffset + kMaxBlocks * sizeof(uint32_t);

static char* g_workspace[kMaxDevices] = {};  // by CUDA device ordinal
static char g_error[512];

struct Peers {
  char* workspace[kMaxRanks];
};

__device__ __forceinline__ void store_line(char* address, uint32_t first, uint32_t second, uint32_t flag) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(first), "r"(flag),
               "r"(second), "r"(flag)
               : "memory");
}

// The 8 data bytes of the line at `address` once both its flags read `flag`.
__device__ __forceinline__ uint2 wait_line(const char* address, uint32_t flag) {
  uint32_t first, first_flag, second, second_flag;
  do {
    asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(first), "=r"(first_flag), "=r"(second), "=r"(second_flag)
                 : "l"(address)
                 : "memory");
  } while (first_flag != flag || second_flag != flag);
  return make_uint2(first, second);
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
__global__ void __launch_bounds__(kThreads) all_reduce_kernel(const char* input, char* output, size_t n_bytes,
                                                              Peers peers, int rank, int n_ranks) {
#if __CUDA_ARCH__ >= 900
  // launched as a programmatic dependent (see all_reduce below): wait for the kernel before to finish,
  // then let the one after start its launch while this one runs
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  char* mine = peers.workspace[rank];
  uint32_t* epochs = reinterpret_cast<uint32_t*>(mine + kEpochsOffset);
  const uint32_t epoch = *reinterpret_cast<volatile uint32_t*>(epochs + blockIdx.x) + 1;
  const size_t slot = epoch & 1;
  const size_t offset = size_t(blockIdx.x) * kBlockBytes + threadIdx.x * 16;  // in the message
  if (offset < n_bytes) {
    const uint4 own = *reinterpret_cast<const uint4*>(input + offset);
    for (int peer = 0; peer < n_ranks; ++peer) {
      if (peer == rank) continue;
      char* to = peers.workspace[peer] + (slot * kMaxRanks + rank) * 2 * kSlotBytes + 2 * offset;
      store_line(to, own.x, own.y, epoch);
      store_line(to + 16, own.z, own.w, epoch);
    }
    float sums[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int source = 0; source < n_ranks; ++source) {
      uint4 packed = own;
      if (source != rank) {
        const char* from = mine + (slot * kMaxRanks + source) * 2 * kSlotBytes + 2 * offset;
        const uint2 low = wait_line(from, epoch), high = wait_line(from + 16, epoch);
        packed = make_uint4(low.x, low.y, high.x, high.y);
      }
      add<T>(sums, packed);
    }
    *reinterpret_cast<uint4*>(output + offset) = pack<T>(sums);
  }
  if (threadIdx.x == 0) epochs[blockIdx.x] = epoch;
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

}  // extern "C"

// groups: every group's device ordinals, [n_groups * group_size]; this device's group is the one
// that holds its ordinal, and its rank the position there.
static ffi::Error all_reduce(cudaStream_t stream, int32_t device, ffi::AnyBuffer input,
                             ffi::Result<ffi::AnyBuffer> output, ffi::Span<const int64_t> groups,
                             int64_t group_size) {
  const size_t n_bytes = input.size_bytes();
  if (n_bytes % 16 != 0 || n_bytes > kSlotBytes) {
    return ffi::Error::InvalidArgument("all-reduce of " + std::to_string(n_bytes) +
                                       " bytes: needs a multiple of 16 up to " + std::to_string(kSlotBytes));
  }
  if (group_size < 1 || group_size > kMaxRanks || groups.size() % group_size != 0) {
    return ffi::Error::InvalidArgument("bad group_size " + std::to_string(group_size));
  }
  int64_t start = -1;
  int rank = -1;
  for (size_t i = 0; i < groups.size(); ++i) {
    if (groups[i] == device) {
      start = i - i % group_size;
      rank = static_cast<int>(i % group_size);
    }
  }
  if (rank < 0) return ffi::Error::InvalidArgument("device " + std::to_string(device) + " is in no group");
  Peers peers = {};
  for (int r = 0; r < group_size; ++r) {
    const int64_t ordinal = groups[start + r];
    if (ordinal < 0 || ordinal >= kMaxDevices || g_workspace[ordinal] == nullptr) {
      return ffi::Error::Internal("device " + std::to_string(ordinal) +
                                  " has no all-reduce workspace (chimera_all_reduce_init)");
    }
    peers.workspace[r] = g_workspace[ordinal];
  }
  const int blocks = static_cast<int>((n_bytes + kBlockBytes - 1) / kBlockBytes);
  const char* in = static_cast<const char*>(input.untyped_data());
  char* out = static_cast<char*>(output->untyped_data());
  const int n_ranks = static_cast<int>(group_size);
  // Programmatic dependent launch (as XLA launches its own kernels): this kernel's start overlaps the
  // end of the one before it, which the kernel waits for (griddepcontrol.wait) before reading anything.
  cudaLaunchAttribute attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  switch (input.element_type()) {
    case ffi::DataType::BF16:
      cudaLaunchKernelEx(&config, all_reduce_kernel<__nv_bfloat16>, in, out, n_bytes, peers, rank, n_ranks);
      break;
    case ffi::DataType::F16:
      cudaLaunchKernelEx(&config, all_reduce_kernel<__half>, in, out, n_bytes, peers, rank, n_ranks);
      break;
    case ffi::DataType::F32:
      cudaLaunchKernelEx(&config, all_reduce_kernel<float>, in, out, n_bytes, peers, rank, n_ranks);
      break;
    default:
      return ffi::Error::InvalidArgument("all-reduce: only bfloat16, float16 and float32");
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(status));
  return ffi::Error::Success();
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
