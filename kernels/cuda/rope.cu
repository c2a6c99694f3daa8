/* Rotary position embedding, HF "rotate half", in place: element i of a head pairs with element
 * i + hd/2, both rotated by the angle of the token's position (table from tga_rope_table). The
 * backward is the same rotation by the negative angle. One thread per pair. */
#include "kernels/cuda/cuda_common.cuh"

namespace tga_cuda {

__global__ void rope_kernel(float *x, const float *cos_sin, int T, int heads, int half, size_t n_pairs, float sign) {
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < n_pairs; p += (size_t)gridDim.x * blockDim.x) {
        const int i = (int)(p % half);
        const size_t head_row = p / half; /* (b*T + t) * heads + head */
        const int t = (int)(head_row / heads % T);
        float *x1 = x + head_row * 2 * half + i, *x2 = x1 + half;
        const float c = cos_sin[((size_t)t * half + i) * 2], s = sign * cos_sin[((size_t)t * half + i) * 2 + 1];
        const float a = *x1, b = *x2;
        *x1 = a * c - b * s;
        *x2 = b * c + a * s;
    }
}

}  // namespace tga_cuda

using namespace tga_cuda;

extern "C" void tga_cuda_rope(float *x, const float *cos_sin, int B, int T, int heads, int head_dim, int inverse) {
    const int half = head_dim / 2;
    const size_t n_pairs = (size_t)B * T * heads * half;
    if (n_pairs == 0) return;
    rope_kernel<<<grid_stride_blocks(n_pairs), kElementwiseThreads, 0, tga_cuda_stream>>>(x, cos_sin, T, heads, half,
                                                                                        n_pairs, inverse ? -1.0f : 1.0f);
    TGA_CUDA_CHECK_LAUNCH("rope_kernel");
}
