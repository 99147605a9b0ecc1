//! Int8 and f32 GEMM kernels for the edge encoder (AVX-512 VNNI, AVX2, NEON dot-product)
