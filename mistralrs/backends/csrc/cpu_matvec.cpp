// Matrix-vector products for decode on x86-64 CPUs with AVX2, FMA and F16C.
//
// A decode step reads every weight once, so its speed is the speed at which the
// product streams memory. torch's CPU kernels stream 6-13 GB/s on a 2-core AVX2
// machine whose memory gives 22 GB/s (see torch_cpu_kernels.py for the figures);
// these read one sequential stream per thread and prefetch ahead of it.
//
// Layout: weights are repacked at load so that four output rows are read as one
// stream. Dense weights (float32 or bfloat16) are stored as (N/4, K/8, 4, 8):
// eight columns of row 0, the same eight of rows 1, 2, 3, then the next eight.
// Quantized weights the same way in steps of 32 bytes per row: 8-bit values as
// (N/4, K/32, 4, 32), one byte per column; 4-bit values as (N/4, K/64, 4, 2, 16),
// two 32-column chunks per step, byte j of a chunk holding column j in its low
// nibble and column j + 16 in its high one. The scale and bias of each group are
// float16, (N/4, K/group, 8): four scales, then four biases. A weight is
// w = scale * q + bias, q unsigned.
//
// Quantized products round the activations to int16 per 32 columns (an error near
// 3e-5 of the largest value in each 32, far below bfloat16's 4e-3) and multiply
// with integer multiply-adds (vpmaddwd), unpacking the weights with masks and
// shifts inside 128-bit lanes only. On the 2-core Zen 3 VM they are still bound
// by arithmetic rather than memory (~18 G weights/s from cache on two threads).
// CPUs with AVX-512 VNNI run 8-bit weights through a 512-bit variant (`bytes512_streams`).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cpuid.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int kRows = 4;              // output rows read as one stream
constexpr int kPrefetchBytes = 512;   // how far ahead of the stream to prefetch
constexpr int64_t kGrainBlocks = 8;   // blocks of rows per thread at least
constexpr int kStreams = 4;           // sequential streams per thread in a dense one-row product
constexpr int kQuantStreams = 3;      // ... and in a quantized one

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

template <typename T>
inline float to_float(T v) { return static_cast<float>(v); }

void check_activations(const at::Tensor& x, int64_t K) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "activations must be f32 or bf16");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == K && x.is_contiguous(), "activations must be contiguous (M, ", K, ")");
}

// ---- dense weights ---------------------------------------------------------

// Blocks `first`, `first + stride`, ... (`Streams` of them) times one row of activations.
// Several streams per thread keep more memory reads in flight than one: on a 2-core Xeon VM
// four moved the benchmark model's one-row products from 19.9 to 15.2 ms per token in float32
// and from 12.4 to 8.4 in bfloat16 (210 matrices read from memory).
template <int Streams, typename X, typename W>
inline void dense_streams(const float* xm, const W* w, X* out, int64_t first, int64_t stride, int64_t K) {
  constexpr int64_t prefetch = kPrefetchBytes / sizeof(W);
  const W* wb[Streams];
  for (int s = 0; s < Streams; ++s) wb[s] = w + (first + s * stride) * kRows * K;
  __m256 acc[Streams * kRows];
  for (int i = 0; i < Streams * kRows; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    __m256 xv = _mm256_loadu_ps(xm + k);
    for (int s = 0; s < Streams; ++s) {
      const W* wk = wb[s] + k * kRows;
      _mm_prefetch(reinterpret_cast<const char*>(wk + prefetch), _MM_HINT_T0);
      for (int r = 0; r < kRows; ++r) acc[s * kRows + r] = _mm256_fmadd_ps(load8(wk + r * 8), xv, acc[s * kRows + r]);
    }
  }
  for (int s = 0; s < Streams; ++s)
    for (int r = 0; r < kRows; ++r) out[(first + s * stride) * kRows + r] = static_cast<X>(hsum(acc[s * kRows + r]));
}

template <typename X, typename W>
void dense_blocks(const X* x, const W* w, X* out, int64_t M, int64_t N, int64_t K) {
  std::vector<float> xf(M * K);
  for (int64_t i = 0; i < M * K; ++i) xf[i] = to_float(x[i]);
  at::parallel_for(0, N / kRows, kGrainBlocks, [&](int64_t begin, int64_t end) {
    if (M == 1) {  // decode: the thread's blocks as kStreams streams, one per part of its range
      const int64_t part = (end - begin) / kStreams;
      for (int64_t i = 0; i < part; ++i) dense_streams<kStreams>(xf.data(), w, out, begin + i, part, K);
      for (int64_t blk = begin + kStreams * part; blk < end; ++blk) dense_streams<1>(xf.data(), w, out, blk, 0, K);
      return;
    }
    // Rows after the first find the block's weights in cache.
    for (int64_t blk = begin; blk < end; ++blk)
      for (int64_t m = 0; m < M; ++m) dense_streams<1>(xf.data() + m * K, w, out + m * N, blk, 0, K);
  });
}

at::Tensor matvec_dense(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "weight must be a contiguous repacked (N, K) tensor");
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  TORCH_CHECK(N % kRows == 0 && K % 8 == 0, "weight shape must be a multiple of (4, 8)");
  check_activations(x, K);
  at::Tensor out = at::empty({M, N}, x.options());
  bool bf16_w = w.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16_w || w.scalar_type() == at::kFloat, "weight must be f32 or bf16");
  if (x.scalar_type() == at::kFloat) {
    if (bf16_w) dense_blocks(x.data_ptr<float>(), w.data_ptr<c10::BFloat16>(), out.data_ptr<float>(), M, N, K);
    else dense_blocks(x.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), M, N, K);
  } else {
    auto xp = x.data_ptr<c10::BFloat16>();
    auto op = out.data_ptr<c10::BFloat16>();
    if (bf16_w) dense_blocks(xp, w.data_ptr<c10::BFloat16>(), op, M, N, K);
    else dense_blocks(xp, w.data_ptr<float>(), op, M, N, K);
  }
  return out;
}

// ---- quantized weights -----------------------------------------------------

// Activations as int16 per 32 columns, value * scale[c] ~ x, in the order the kernel's
// in-lane unpacking produces weights (see the layouts above `quantized_blocks`), with
// float sums per weight group for the biases.
struct QuantizedActivations {
  std::vector<int16_t> values;   // (M, K), permuted within pairs of chunks
  std::vector<float> scales;     // (M, K / 32)
  std::vector<float> group_sums; // (M, K / group)
};

// Where column i of a 32-column chunk goes. Loaded as int16 lanes, `v & 0xff` yields
// the even columns of each 16 and `v >> 8` the odd ones, so the activations are
// stored in that order: for bytes [even of 0-15, even of 16-31, odd of 0-15, odd of
// 16-31]; for nibbles, groups of 8 [even 0-15, odd 0-15, even 16-31, odd 16-31], each
// group of a pair of chunks side by side (the first chunk's 8, then the second's).
inline int16_t* column_slot(int16_t* pair_base, int64_t chunk, int i, bool pair_lanes) {
  if (!pair_lanes) return pair_base + (i % 2) * 16 + (i / 16) * 8 + (i % 16) / 2;
  int group = (i / 16) * 2 + i % 2;
  return pair_base + group * 16 + (chunk % 2) * 8 + (i % 16) / 2;
}

template <typename X>
QuantizedActivations quantize_activations(const X* x, int64_t M, int64_t K, int64_t group, bool pair_lanes) {
  QuantizedActivations q;
  const int64_t chunks = K / 32;
  q.values.resize(M * K);
  q.scales.resize(M * chunks);
  q.group_sums.assign(M * (K / group), 0.0f);
  float xf[32];
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t c = 0; c < chunks; ++c) {
      const X* xc = x + m * K + c * 32;
      __m256 amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
      const __m256 sign = _mm256_set1_ps(-0.0f);
      for (int i = 0; i < 32; i += 8) {
        for (int j = 0; j < 8; ++j) xf[i + j] = to_float(xc[i + j]);
        __m256 v = _mm256_loadu_ps(xf + i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
        sum = _mm256_add_ps(sum, v);
      }
      __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      a = _mm_max_ps(a, _mm_movehl_ps(a, a));
      a = _mm_max_ss(a, _mm_movehdup_ps(a));
      const float largest = _mm_cvtss_f32(a);
      const float inverse = largest > 0.0f ? 32767.0f / largest : 0.0f;
      // Nibble kernels read chunks in pairs, 8 values of each chunk per 128-bit lane.
      int16_t* base = q.values.data() + m * K + (pair_lanes ? (c / 2) * 64 : c * 32);
      for (int i = 0; i < 32; ++i)
        *column_slot(base, c, i, pair_lanes) = static_cast<int16_t>(std::nearbyint(xf[i] * inverse));
      q.scales[m * chunks + c] = largest / 32767.0f;
      q.group_sums[m * (K / group) + c * 32 / group] += hsum(sum);
    }
  }
  return q;
}

// Multiply-adds of one block's 4 rows with one row of activations, per 256-bit step.
//
// Bytes: 32 columns of one row; int16 lanes of the loaded vector hold columns (2i, 2i+1)
// of each 16, so `v & 0xff` gives the even columns and `v >> 8` the odd ones, with no
// shuffle across lanes. Nibbles: two chunks of one row, the low 128-bit lane for the
// first (byte j: column j low, j + 16 high) and the high lane for the second; one mask
// and one shift per nibble, then the same even/odd split. Integer lanes 0-3 then belong
// to the first chunk and 4-7 to the second, so their scales are applied per lane.
struct Bytes {
  static constexpr int kStepBytes = 32;  // per row and step
  static constexpr int kChunksPerStep = 1;
  static inline __m256i dot(const uint8_t* p, const int16_t* x) {
    const __m256i low_byte = _mm256_set1_epi16(0xff);
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i even = _mm256_and_si256(v, low_byte), odd = _mm256_srli_epi16(v, 8);
    const __m256i* xv = reinterpret_cast<const __m256i*>(x);
    return _mm256_add_epi32(_mm256_madd_epi16(even, _mm256_loadu_si256(xv)),
                            _mm256_madd_epi16(odd, _mm256_loadu_si256(xv + 1)));
  }
};
struct Nibbles {
  static constexpr int kStepBytes = 32;
  static constexpr int kChunksPerStep = 2;
  static inline __m256i dot(const uint8_t* p, const int16_t* x) {
    const __m256i nibble = _mm256_set1_epi8(15), low_byte = _mm256_set1_epi16(0xff);
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i lo = _mm256_and_si256(v, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
    const __m256i* xv = reinterpret_cast<const __m256i*>(x);
    __m256i a = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(lo, low_byte), _mm256_loadu_si256(xv)),
                                 _mm256_madd_epi16(_mm256_srli_epi16(lo, 8), _mm256_loadu_si256(xv + 1)));
    __m256i b = _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(hi, low_byte), _mm256_loadu_si256(xv + 2)),
                                 _mm256_madd_epi16(_mm256_srli_epi16(hi, 8), _mm256_loadu_si256(xv + 3)));
    return _mm256_add_epi32(a, b);
  }
};

inline __m128 load_scales4(const uint16_t* p) {
  return _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// Where each of a call's streams reads its weights, scales and biases, and where row m of the
// activations is; `finish` adds each row's biases times its groups' activation sums and stores it.
template <int Streams>
struct StreamView {
  const uint8_t* q[Streams];
  const uint16_t* sb[Streams];  // per group: 4 scales, 4 biases
  const int16_t* x;
  const float* x_scales;        // per chunk
  const float* x_group_sums;    // per group
  int64_t groups;

  StreamView(const QuantizedActivations& xq, const uint8_t* values, const uint16_t* scale_bias, int64_t block_bytes,
             int64_t first, int64_t stride, int64_t m, int64_t K, int64_t group)
      : x(xq.values.data() + m * K), x_scales(xq.scales.data() + m * (K / 32)),
        x_group_sums(xq.group_sums.data() + m * (K / group)), groups(K / group) {
    for (int s = 0; s < Streams; ++s) {
      q[s] = values + (first + s * stride) * block_bytes;
      sb[s] = scale_bias + (first + s * stride) * groups * 2 * kRows;
    }
  }

  template <typename X>
  void finish(int s, const float* row_sums, X* out) const {
    __m128 bias = _mm_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) bias = _mm_fmadd_ps(load_scales4(sb[s] + g * 8 + 4), _mm_set1_ps(x_group_sums[g]), bias);
    alignas(16) float b[kRows];
    _mm_store_ps(b, bias);
    for (int r = 0; r < kRows; ++r) out[r] = static_cast<X>(row_sums[r] + b[r]);
  }
};

// Blocks `first`, `first + stride`, ... (`Streams` of them) times row m of the activations. Three
// streams per thread moved the benchmark model's one-row Q8_0 products from 8.9 to 5.1 ms per
// token and 4-bit ones from 5.2 to 4.1 (2-core Xeon VM, 210 matrices read from memory).
template <typename Storage, int Streams, typename X>
inline void quantized_streams(const QuantizedActivations& xq, const uint8_t* q, const uint16_t* scale_bias, X* out,
                              int64_t first, int64_t stride, int64_t m, int64_t N, int64_t K, int64_t group) {
  const int64_t steps = K / 32 / Storage::kChunksPerStep;
  constexpr int64_t block_step = kRows * Storage::kStepBytes;
  const StreamView<Streams> view(xq, q, scale_bias, steps * block_step, first, stride, m, K, group);
  const uint8_t* const* qb = view.q;
  const uint16_t* const* sb = view.sb;
  const int16_t* xi = view.x;
  const float* xs = view.x_scales;
  alignas(32) float scaled[Streams][2 * kRows];
  __m256 acc[Streams * kRows];
  for (int i = 0; i < Streams * kRows; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t t = 0; t < steps; ++t) {
    const int16_t* xt = xi + t * 32 * Storage::kChunksPerStep;
    const int64_t c = t * Storage::kChunksPerStep;
    for (int s = 0; s < Streams; ++s) {
      const uint8_t* qt = qb[s] + t * block_step;
      _mm_prefetch(reinterpret_cast<const char*>(qt + kPrefetchBytes), _MM_HINT_T0);
      // Scale of each row's chunk(s) times the activations' scale: rows 0-3 of the first chunk, then of the second.
      _mm_store_ps(scaled[s], _mm_mul_ps(load_scales4(sb[s] + (c * 32 / group) * 8), _mm_set1_ps(xs[c])));
      if (Storage::kChunksPerStep == 2) {
        const int64_t c2 = c + 1;
        _mm_store_ps(scaled[s] + kRows, _mm_mul_ps(load_scales4(sb[s] + (c2 * 32 / group) * 8), _mm_set1_ps(xs[c2])));
      }
      for (int r = 0; r < kRows; ++r) {
        __m256 d = _mm256_cvtepi32_ps(Storage::dot(qt + r * Storage::kStepBytes, xt));
        __m256 sc = Storage::kChunksPerStep == 2
                        ? _mm256_set_m128(_mm_set1_ps(scaled[s][kRows + r]), _mm_set1_ps(scaled[s][r]))
                        : _mm256_set1_ps(scaled[s][r]);
        acc[s * kRows + r] = _mm256_fmadd_ps(d, sc, acc[s * kRows + r]);
      }
    }
  }
  for (int s = 0; s < Streams; ++s) {
    float sums[kRows];
    for (int r = 0; r < kRows; ++r) sums[r] = hsum(acc[s * kRows + r]);
    view.finish(s, sums, out + m * N + (first + s * stride) * kRows);
  }
}

// ---- 8-bit weights on AVX-512 VNNI ------------------------------------------
//
// The same layout and int16 activations, with a 512-bit register holding one 32-column chunk of
// two rows, and vpdpwssd multiplying and adding pairs in one instruction: per 64 weights, one
// load, a mask, a shift, two multiply-adds, one conversion and one scaling, where the AVX2 path
// above spends about twice that. That path is bound by arithmetic on the 2-core Sapphire Rapids
// VM too (one-row products of the 115.6 M benchmark model's 8-bit weights at ~20 GB/s), so
// halving its instructions is what lets the product approach memory's speed. Each float lane
// sums the same four columns' exact integer products, scaled and added in the same order, so
// the results are the AVX2 path's to the bit (the tests check both paths).

bool cpu_has_avx512_vnni() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool vnni = c & (1u << 11);
  if (!(f && dq && bw && vl && vnni)) return false;
  // ...and the OS saves the AVX-512 registers (XCR0: SSE, AVX, opmask, ZMM halves).
  unsigned lo, hi;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 0xe6u) == 0xe6u;
}

std::atomic<bool>& avx512_enabled() {  // on where supported; tests switch it off to check the AVX2 path
  static std::atomic<bool> enabled{cpu_has_avx512_vnni()};
  return enabled;
}

__attribute__((target("avx512f,avx512bw"))) inline float hsum512_half(__m512 v, int half) {
  __m256 h = half ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)) : _mm512_castps512_ps256(v);
  return hsum(h);
}

template <int Streams, typename X>
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni"))) void bytes512_streams(
    const QuantizedActivations& xq, const uint8_t* q, const uint16_t* scale_bias, X* out, int64_t first,
    int64_t stride, int64_t m, int64_t N, int64_t K, int64_t group) {
  const int64_t chunks = K / 32;
  constexpr int64_t block_step = kRows * 32;
  const StreamView<Streams> view(xq, q, scale_bias, chunks * block_step, first, stride, m, K, group);
  const uint8_t* const* qb = view.q;
  const uint16_t* const* sb = view.sb;
  const int16_t* xi = view.x;
  const float* xs = view.x_scales;
  const __m512i low_byte = _mm512_set1_epi16(0xff);
  // Lanes 0-7 take the first row's scale, 8-15 the second's: rows 0-1, then rows 2-3.
  const __m512i rows01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i rows23 = _mm512_add_epi32(rows01, _mm512_set1_epi32(2));
  __m512 acc[Streams * 2];
  for (int i = 0; i < Streams * 2; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t c = 0; c < chunks; ++c) {
    // The chunk's even columns for both rows of a register, then its odd ones.
    const __m256i* xc = reinterpret_cast<const __m256i*>(xi + c * 32);
    const __m512i even_x = _mm512_broadcast_i64x4(_mm256_loadu_si256(xc));
    const __m512i odd_x = _mm512_broadcast_i64x4(_mm256_loadu_si256(xc + 1));
    for (int s = 0; s < Streams; ++s) {
      const uint8_t* qt = qb[s] + c * block_step;
      _mm_prefetch(reinterpret_cast<const char*>(qt + kPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(qt + kPrefetchBytes + 64), _MM_HINT_T0);
      const __m512 scales = _mm512_castps128_ps512(
          _mm_mul_ps(load_scales4(sb[s] + (c * 32 / group) * 8), _mm_set1_ps(xs[c])));
      for (int h = 0; h < 2; ++h) {
        const __m512i v = _mm512_loadu_si512(qt + h * 64);
        __m512i d = _mm512_dpwssd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, low_byte), even_x);
        d = _mm512_dpwssd_epi32(d, _mm512_srli_epi16(v, 8), odd_x);
        const __m512 sc = _mm512_permutexvar_ps(h ? rows23 : rows01, scales);
        acc[s * 2 + h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, acc[s * 2 + h]);
      }
    }
  }
  for (int s = 0; s < Streams; ++s) {
    float sums[kRows];
    for (int r = 0; r < kRows; ++r) sums[r] = hsum512_half(acc[s * 2 + r / 2], r % 2);
    view.finish(s, sums, out + m * N + (first + s * stride) * kRows);
  }
}

// One block stream (or `Streams` of them) of `Storage` weights: the AVX-512 variant for bytes
// where the CPU has it.
template <typename Storage, int Streams, typename X>
inline void block_streams(const QuantizedActivations& xq, const uint8_t* q, const uint16_t* scale_bias, X* out,
                          int64_t first, int64_t stride, int64_t m, int64_t N, int64_t K, int64_t group,
                          bool wide) {
  if constexpr (std::is_same_v<Storage, Bytes>) {
    if (wide) return bytes512_streams<Streams>(xq, q, scale_bias, out, first, stride, m, N, K, group);
  }
  quantized_streams<Storage, Streams>(xq, q, scale_bias, out, first, stride, m, N, K, group);
}

template <typename Storage, typename X>
void quantized_blocks(const QuantizedActivations& xq, const uint8_t* q, const uint16_t* scale_bias, X* out,
                      int64_t M, int64_t N, int64_t K, int64_t group) {
  const bool wide = avx512_enabled().load(std::memory_order_relaxed);
  at::parallel_for(0, N / kRows, kGrainBlocks, [&](int64_t begin, int64_t end) {
    if (M == 1) {  // decode: several streams per thread, as in dense_blocks
      const int64_t part = (end - begin) / kQuantStreams;
      for (int64_t i = 0; i < part; ++i)
        block_streams<Storage, kQuantStreams>(xq, q, scale_bias, out, begin + i, part, 0, N, K, group, wide);
      for (int64_t blk = begin + kQuantStreams * part; blk < end; ++blk)
        block_streams<Storage, 1>(xq, q, scale_bias, out, blk, 0, 0, N, K, group, wide);
      return;
    }
    // Rows after the first find the block's weights in cache.
    for (int64_t blk = begin; blk < end; ++blk)
      for (int64_t m = 0; m < M; ++m) block_streams<Storage, 1>(xq, q, scale_bias, out, blk, 0, m, N, K, group, wide);
  });
}

template <typename Storage>
at::Tensor matvec_quantized(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale_bias,
                            int64_t group, int64_t in_features) {
  const int64_t K = in_features, M = x.size(0);
  constexpr int64_t step = 32 * Storage::kChunksPerStep;
  TORCH_CHECK(K % step == 0 && K % group == 0 && (group == 32 || group % step == 0),
              "in_features and the group size do not fit the kernel's steps of ", step, " columns");
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 2, "values must be contiguous uint8");
  const int64_t N = q.size(0);
  TORCH_CHECK(N % kRows == 0 && q.size(1) * step == K * Storage::kStepBytes, "values have the wrong shape");
  TORCH_CHECK(scale_bias.scalar_type() == at::kHalf && scale_bias.is_contiguous() &&
                  scale_bias.numel() == N * (K / group) * 2,
              "scales and biases must be contiguous float16 (N/4, K/group, 8)");
  check_activations(x, K);
  at::Tensor out = at::empty({M, N}, x.options());
  auto sb = reinterpret_cast<const uint16_t*>(scale_bias.data_ptr<at::Half>());
  const bool pairs = Storage::kChunksPerStep == 2;
  if (x.scalar_type() == at::kFloat) {
    auto xq = quantize_activations(x.data_ptr<float>(), M, K, group, pairs);
    quantized_blocks<Storage>(xq, q.data_ptr<uint8_t>(), sb, out.data_ptr<float>(), M, N, K, group);
  } else {
    auto xq = quantize_activations(x.data_ptr<c10::BFloat16>(), M, K, group, pairs);
    quantized_blocks<Storage>(xq, q.data_ptr<uint8_t>(), sb, out.data_ptr<c10::BFloat16>(), M, N, K, group);
  }
  return out;
}

// Switches the AVX-512 path for 8-bit weights on or off (tests compare both); returns whether
// it is on afterwards, which is never where the CPU lacks it.
bool use_avx512(bool enabled) {
  avx512_enabled().store(enabled && cpu_has_avx512_vnni());
  return avx512_enabled().load();
}

}  // namespace

TORCH_LIBRARY(mistralrs_cpu, m) {
  m.def("matvec_dense(Tensor x, Tensor w) -> Tensor");
  m.def("matvec_q4(Tensor x, Tensor q, Tensor scale_bias, int group, int in_features) -> Tensor");
  m.def("matvec_q8(Tensor x, Tensor q, Tensor scale_bias, int group, int in_features) -> Tensor");
  m.def("use_avx512(bool enabled) -> bool", &use_avx512);
}

TORCH_LIBRARY_IMPL(mistralrs_cpu, CPU, m) {
  m.impl("matvec_dense", &matvec_dense);
  m.impl("matvec_q4", &matvec_quantized<Nibbles>);
  m.impl("matvec_q8", &matvec_quantized<Bytes>);
}
