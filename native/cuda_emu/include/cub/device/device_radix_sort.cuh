// The CUDA emulator's cub::DeviceRadixSort: SortPairs, a stable ascending sort of (key, value) pairs by the key's
// bits [begin_bit, end_bit), enqueued on the stream (so a captured graph sorts at each launch). Unsigned integer keys
// only (what native/cuda sorts). As cub: a null d_temp_storage asks for the temp storage's size, and a smaller
// temp_storage_bytes than that size is cudaErrorInvalidValue. The emulation needs no temp storage; the size it asks
// for grows as cub's does (an extra copy of keys and values), so a caller that sizes it for too few items fails here.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../../cuda_runtime.h"

namespace cub {

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const KeyT* d_keys_in,
                               KeyT* d_keys_out, const ValueT* d_values_in, ValueT* d_values_out, NumItemsT num_items,
                               int begin_bit = 0, int end_bit = sizeof(KeyT) * 8, cudaStream_t stream = 0) {
    static_assert(std::is_integral_v<KeyT> && std::is_unsigned_v<KeyT>, "emulated radix sorts take unsigned keys");
    const long long n = static_cast<long long>(num_items);
    if (n < 0 || begin_bit < 0 || begin_bit > end_bit || end_bit > static_cast<int>(sizeof(KeyT) * 8))
      return cudaErrorInvalidValue;
    const size_t need = 256 + static_cast<size_t>(n) * (sizeof(KeyT) + sizeof(ValueT));
    if (!d_temp_storage) {
      temp_storage_bytes = need;
      return cudaSuccess;
    }
    if (temp_storage_bytes < need) return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    optune_emu::enqueue(stream, [=] {
      const int bits = end_bit - begin_bit;
      const auto digit = [=](KeyT key) -> uint64_t {  // the bits compared; 0 when none are
        if (bits == 0) return 0;
        const uint64_t v = static_cast<uint64_t>(key) >> begin_bit;
        return bits >= 64 ? v : v & ((uint64_t(1) << bits) - 1);
      };
      std::vector<size_t> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), size_t(0));
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return digit(d_keys_in[a]) < digit(d_keys_in[b]); });
      for (size_t i = 0; i < order.size(); i++) {
        d_keys_out[i] = d_keys_in[order[i]];
        d_values_out[i] = d_values_in[order[i]];
      }
    });
    return cudaSuccess;
  }
};

}  // namespace cub
