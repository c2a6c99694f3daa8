/* Host emulation of cub::DeviceRadixSort::SortPairs: a stable sort of (key, value) pairs by key,
 * which is the property the embedding backward relies on. */
#ifndef TGA_EMULATED_CUB_DEVICE_RADIX_SORT_CUH
#define TGA_EMULATED_CUB_DEVICE_RADIX_SORT_CUH

#include <algorithm>
#include <numeric>
#include <vector>

#include "cuda_runtime_api.h"

namespace cub {
struct DeviceRadixSort {
    template <class Key, class Value, class Count>
    static cudaError_t SortPairs(void *temp, size_t &temp_bytes, const Key *keys_in, Key *keys_out,
                                 const Value *values_in, Value *values_out, Count n, int begin_bit = 0,
                                 int end_bit = (int)sizeof(Key) * 8, cudaStream_t stream = nullptr) {
        (void)begin_bit, (void)end_bit, (void)stream;
        if (!temp) {
            temp_bytes = 1;
            return cudaSuccess;
        }
        std::vector<size_t> order((size_t)n);
        std::iota(order.begin(), order.end(), size_t{0});
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return keys_in[a] < keys_in[b]; });
        std::vector<Key> keys((size_t)n);
        std::vector<Value> values((size_t)n);
        for (size_t i = 0; i < (size_t)n; i++) {
            keys[i] = keys_in[order[i]];
            values[i] = values_in[order[i]];
        }
        std::copy(keys.begin(), keys.end(), keys_out);
        std::copy(values.begin(), values.end(), values_out);
        return cudaSuccess;
    }
};
}  // namespace cub

#endif
