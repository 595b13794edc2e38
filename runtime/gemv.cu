// One row times a weight matrix, y [N] = x [K] . W [K, N] (W row-major), for a decode step's products.
//
// Built by runtime/gemv.py with nvcc and called through XLA's FFI. XLA computes such a product over a
// zero row added to x (runtime/linear.py) as a split-K Triton GEMM, and sums the K-splits in a kernel
// of its own after it; this kernel reads W once at the memory's pace and sums its K-splits itself.
//
// Thread block b of a cluster of `splits` blocks takes a tile of W's columns (128 bytes of a row) and
// the split-th share of its rows (x's share in shared memory): 8 threads span a row's 128 bytes (16 bytes each), 32 rows at a time,
// each thread keeping two batches of 8 rows' loads in flight. Its 32 row sums are added in a fixed order,
// then the cluster's first block adds the blocks' sums in rank order from their shared memory (Hopper's
// distributed shared memory): the same bits on every call, no workspace, one kernel.
//
// Launched as a programmatic dependent: W is a parameter, which no kernel writes, so each thread loads
// its first batch of W before it waits for the kernel before to finish (and to have written x).
#include <cstdint>
#include <string>

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kLanes = 8;                     // threads across a tile's 128 bytes of a row
constexpr int kRowLanes = kThreads / kLanes;  // rows a block reads at a time
constexpr int kBatch = 8;                     // rows a thread loads before it multiplies
constexpr int kMaxSplits = 8;                 // blocks a cluster (the portable cluster size)

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

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) gemv_kernel(const T* x, const T* w, T* y, int rows, int columns,
                                                        int rows_per_split) {
#if __CUDA_ARCH__ >= 900
  constexpr int kPerLoad = 16 / sizeof(T);            // values a 16-byte load
  constexpr int kTileColumns = kLanes * kPerLoad;     // columns a tile
  cg::cluster_group cluster = cg::this_cluster();
  const int splits = static_cast<int>(cluster.num_blocks());
  const int split = static_cast<int>(cluster.block_rank());
  const int tile = blockIdx.x / splits;
  const int lane = threadIdx.x % kLanes, row_lane = threadIdx.x / kLanes;
  const int first_row = split * rows_per_split, end_row = min(rows, first_row + rows_per_split);
  const T* column = w + size_t(tile) * kTileColumns + lane * kPerLoad;  // row 0 of this thread's 16 bytes

  // Two batches in flight: while a thread multiplies one, the next one's loads are on their way.
  const int step = kBatch * kRowLanes;  // rows a batch
  uint4 even[kBatch], odd[kBatch];
  auto load = [&](uint4* batch, int batch_row) {  // rows batch_row + row_lane + i * kRowLanes
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int row = batch_row + row_lane + i * kRowLanes;
      batch[i] = row < end_row ? __ldg(reinterpret_cast<const uint4*>(column + size_t(row) * columns))
                               : make_uint4(0, 0, 0, 0);
    }
  };
  load(even, first_row);
  load(odd, first_row + step);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  // This split's share of x, in shared memory: each batch then waits on W alone.
  extern __shared__ float xs[];
  for (int row = first_row + threadIdx.x; row < end_row; row += kThreads) xs[row - first_row] = to_float(x[row]);
  __syncthreads();

  float sums[kPerLoad] = {};
  auto multiply = [&](const uint4* batch, int batch_row) {
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      const int row = batch_row + row_lane + i * kRowLanes;
      const float x_value = row < end_row ? xs[row - first_row] : 0.f;
      const T* values = reinterpret_cast<const T*>(&batch[i]);
#pragma unroll
      for (int j = 0; j < kPerLoad; ++j) sums[j] += x_value * to_float(values[j]);
    }
  };
  for (int batch_row = first_row; batch_row < end_row; batch_row += 2 * step) {
    multiply(even, batch_row);
    if (batch_row + 2 * step < end_row) load(even, batch_row + 2 * step);
    if (batch_row + step < end_row) multiply(odd, batch_row + step);
    if (batch_row + 3 * step < end_row) load(odd, batch_row + 3 * step);
  }
  asm volatile("griddepcontrol.launch_dependents;");

  __shared__ float lane_sums[kRowLanes][kTileColumns];
  __shared__ float block_sums[kTileColumns];
#pragma unroll
  for (int j = 0; j < kPerLoad; ++j) lane_sums[row_lane][lane * kPerLoad + j] = sums[j];
  __syncthreads();
  if (threadIdx.x < kTileColumns) {
    float total = 0.f;
    for (int r = 0; r < kRowLanes; ++r) total += lane_sums[r][threadIdx.x];
    block_sums[threadIdx.x] = total;
  }
  cluster.sync();  // every block's sums written, visible to the cluster
  if (split == 0 && threadIdx.x < kTileColumns) {
    float total = 0.f;
    for (int r = 0; r < splits; ++r) total += cluster.map_shared_rank(block_sums, r)[threadIdx.x];
    y[size_t(tile) * kTileColumns + threadIdx.x] = from_float<T>(total);
  }
  cluster.sync();  // the other blocks keep their shared memory until the first has read it
#endif
}

// The launch of gemv_kernel<T> for `tiles` tiles of `rows` rows in clusters of `splits` blocks.
template <typename T>
static cudaLaunchConfig_t configure(cudaStream_t stream, cudaLaunchAttribute* attributes, int tiles, int splits,
                                    int rows) {
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = 1;
  attributes[1].id = cudaLaunchAttributeClusterDimension;
  attributes[1].val.clusterDim.x = splits;
  attributes[1].val.clusterDim.y = 1;
  attributes[1].val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(tiles * splits);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = (rows + splits - 1) / splits * sizeof(float);  // the split's share of x
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = 2;
  return config;
}

// Blocks a cluster: the most (up to kMaxSplits, each with two batches of rows for every thread) whose
// clusters all fit on the GPU at once. A second wave of long blocks would nearly double the time.
template <typename T>
static int choose_splits(cudaStream_t stream, int tiles, int rows) {
  int best = 1;
  for (int splits = 2; splits <= kMaxSplits && rows / splits >= 2 * kBatch * kRowLanes; splits *= 2) {
    cudaLaunchAttribute attributes[2] = {};
    cudaLaunchConfig_t config = configure<T>(stream, attributes, tiles, splits, rows);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, gemv_kernel<T>, &config) != cudaSuccess) {
      cudaGetLastError();  // clear it
      break;
    }
    if (clusters < tiles) break;
    best = splits;
  }
  return best;
}

template <typename T>
static ffi::Error launch(cudaStream_t stream, const void* x, const void* w, void* y, int rows, int columns) {
  constexpr int kTileColumns = kLanes * 16 / sizeof(T);
  if (columns % kTileColumns != 0) {
    return ffi::Error::InvalidArgument("gemv: " + std::to_string(columns) + " columns, not a multiple of " +
                                       std::to_string(kTileColumns));
  }
  const int tiles = columns / kTileColumns, splits = choose_splits<T>(stream, tiles, rows);
  const int rows_per_split = (rows + splits - 1) / splits;
  if (rows_per_split * sizeof(float) > 48 * 1024) {
    return ffi::Error::InvalidArgument("gemv: " + std::to_string(rows) + " rows, more than a block's shared memory "
                                       "holds of x");
  }
  cudaLaunchAttribute attributes[2] = {};
  cudaLaunchConfig_t config = configure<T>(stream, attributes, tiles, splits, rows);
  cudaLaunchKernelEx(&config, gemv_kernel<T>, static_cast<const T*>(x), static_cast<const T*>(w),
                     static_cast<T*>(y), rows, columns, rows_per_split);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return ffi::Error::Internal(cudaGetErrorString(status));
  return ffi::Error::Success();
}

// x: K values; w: [K, N]; y: N values; all of one type.
static ffi::Error gemv(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                       ffi::Result<ffi::AnyBuffer> y) {
  const ffi::DataType type = x.element_type();
  if (w.element_type() != type || y->element_type() != type) {
    return ffi::Error::InvalidArgument("gemv: x, w and y must share one type");
  }
  const size_t rows = x.element_count(), columns = y->element_count();
  if (rows == 0 || columns == 0 || w.element_count() != rows * columns || rows > INT32_MAX || columns > INT32_MAX) {
    return ffi::Error::InvalidArgument("gemv: w has " + std::to_string(w.element_count()) + " values, not " +
                                       std::to_string(rows) + " x " + std::to_string(columns));
  }
  const int k = static_cast<int>(rows), n = static_cast<int>(columns);
  switch (type) {
    case ffi::DataType::BF16:
      return launch<__nv_bfloat16>(stream, x.untyped_data(), w.untyped_data(), y->untyped_data(), k, n);
    case ffi::DataType::F16:
      return launch<__half>(stream, x.untyped_data(), w.untyped_data(), y->untyped_data(), k, n);
    case ffi::DataType::F32:
      return launch<float>(stream, x.untyped_data(), w.untyped_data(), y->untyped_data(), k, n);
    default:
      return ffi::Error::InvalidArgument("gemv: only bfloat16, float16 and float32");
  }
}

extern "C" {
// Loads the kernels now (lazy loading inside a CUDA graph capture is not allowed). Returns 0 or a CUDA error.
int chimera_gemv_load() {
  cudaFuncAttributes attributes;
  cudaError_t status = cudaFuncGetAttributes(&attributes, gemv_kernel<__nv_bfloat16>);
  if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, gemv_kernel<__half>);
  if (status == cudaSuccess) status = cudaFuncGetAttributes(&attributes, gemv_kernel<float>);
  return static_cast<int>(status);
}
}  // extern "C"

XLA_FFI_DEFINE_HANDLER_SYMBOL(chimera_gemv, gemv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>(),
                              {ffi::Traits::kCmdBufferCompatible});
