// Attention of one new position per head against the key/value cache (decode),
// float32, on x86-64 CPUs with AVX2 and FMA.
//
// At decode every head has a single query row, and torch's CPU SDPA spends most of
// its time on blocking and bookkeeping built for long query blocks (~50 us per
// layer on the 134.5 M benchmark model at 300 cached positions, for ~0.7 MFLOP).
// Here each key and value row is read once for all the query heads that share it
// (grouped-query attention), the positions are split into chunks so both threads
// have work, and the chunks' softmax partials (running max, sum, weighted values)
// are merged exactly as in flash-decoding.
//
// Shapes: q (B, H, 1, D), keys (B, Hkv, T, D), values (B, Hkv, T, Dv) with H a
// multiple of Hkv and D, Dv multiples of 8; any strides whose last one is 1 (the
// cache's views). Returns (B, H, 1, Dv), contiguous.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kMaxGroup = 8;              // query heads per key head handled in registers at once
constexpr int64_t kMinChunk = 32;         // positions per chunk at least
constexpr int64_t kSerialWork = 1 << 15;  // below this many key values, one thread does it all
// How far ahead of the score loop the key and value rows are prefetched (4 KB of 64-wide rows).
// In a decode step the weights streamed since the layer's last token have pushed its cache out
// of the CPU's caches, and read as one stream per thread it arrived at ~8 GB/s: 69 us per layer
// of the h512 benchmark model at 520 positions, against 27 us for the same call repeated. Between
// that model's Q8_0 products, 30 layers took 1.70-1.85 ms with the prefetch and 2.05-2.12 without
// (2-core Xeon VM, back to back, a busy hour).
constexpr int64_t kPrefetchRows = 16;

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// e^x for x <= 0 (scores minus their maximum), Cephes' polynomial: relative error ~2e-7.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));  // e^-87 is below float's normal range: 0 for softmax
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

inline void prefetch_row(const float* row, int64_t floats) {
  for (int64_t i = 0; i < floats; i += 16) _mm_prefetch(reinterpret_cast<const char*>(row + i), _MM_HINT_T0);
}

struct Cache {
  const float* base;
  int64_t batch_stride, head_stride, row_stride;
  const float* row(int64_t b, int64_t h, int64_t t) const {
    return base + b * batch_stride + h * head_stride + t * row_stride;
  }
};

// One chunk [t0, t1) of positions for G query heads sharing one key head (G a template
// argument, so the per-head accumulators stay in registers). Writes each head's max
// score, sum of e^(score - max) and unnormalized output.
template <int G>
void attend_chunk(const float* const* q, const Cache& keys, const Cache& values, int64_t b, int64_t h, int64_t t0,
                  int64_t t1, int64_t D, int64_t Dv, float scale, float* scores, float* maxes, float* sums,
                  float* out) {
  const int64_t n = t1 - t0;
  // Scores: each key row is loaded once and multiplied with every head of the group. The rows
  // kPrefetchRows ahead, keys and values both, are prefetched: one sequential read per thread
  // left memory idle (see kPrefetchRows).
  for (int64_t t = 0; t < n; ++t) {
    const float* k = keys.row(b, h, t0 + t);
    if (t + kPrefetchRows < n) {
      prefetch_row(keys.row(b, h, t0 + t + kPrefetchRows), D);
      prefetch_row(values.row(b, h, t0 + t + kPrefetchRows), Dv);
    }
    __m256 acc[G];
    for (int g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) {
      const __m256 kv = _mm256_loadu_ps(k + d);
      for (int g = 0; g < G; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q[g] + d), kv, acc[g]);
    }
    for (int g = 0; g < G; ++g) scores[g * n + t] = hsum8(acc[g]) * scale;
  }
  // Softmax numerators per head, in place.
  for (int g = 0; g < G; ++g) {
    float* s = scores + g * n;
    float top = -INFINITY;
    for (int64_t t = 0; t < n; ++t) top = std::max(top, s[t]);
    const __m256 top8 = _mm256_set1_ps(top);
    __m256 total8 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) {
      const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + t), top8));
      _mm256_storeu_ps(s + t, e);
      total8 = _mm256_add_ps(total8, e);
    }
    float total = hsum8(total8);
    for (; t < n; ++t) {
      s[t] = std::exp(s[t] - top);
      total += s[t];
    }
    maxes[g] = top;
    sums[g] = total;
  }
  // Weighted values, 32 columns at a time in registers; the chunk's value rows stay in cache
  // across the heads of the group.
  for (int g = 0; g < G; ++g) {
    const float* p = scores + g * n;
    for (int64_t d = 0; d < Dv; d += 32) {
      const int64_t width = std::min<int64_t>(32, Dv - d);
      __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      if (width == 32) {
        for (int64_t t = 0; t < n; ++t) {
          const float* v = values.row(b, h, t0 + t) + d;
          const __m256 w = _mm256_set1_ps(p[t]);
          for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * j), acc[j]);
        }
      } else {
        for (int64_t t = 0; t < n; ++t) {
          const float* v = values.row(b, h, t0 + t) + d;
          const __m256 w = _mm256_set1_ps(p[t]);
          for (int j = 0; j < width / 8; ++j) acc[j] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * j), acc[j]);
        }
      }
      for (int j = 0; j < width / 8; ++j) _mm256_storeu_ps(out + g * Dv + d + 8 * j, acc[j]);
    }
  }
}

using ChunkFn = void (*)(const float* const*, const Cache&, const Cache&, int64_t, int64_t, int64_t, int64_t,
                         int64_t, int64_t, float, float*, float*, float*, float*);
constexpr ChunkFn kChunkFns[kMaxGroup] = {attend_chunk<1>, attend_chunk<2>, attend_chunk<3>, attend_chunk<4>,
                                          attend_chunk<5>, attend_chunk<6>, attend_chunk<7>, attend_chunk<8>};

Cache view_of(const at::Tensor& t) {
  return {t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "decode_attention takes float32 queries, keys and values");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == 1,
              "decode_attention takes q (B, H, 1, D), keys (B, Hkv, T, D), values (B, Hkv, T, Dv)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1), T = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == T && k.size(3) == D,
              "keys and values do not match the queries' batch, heads or head size");
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "the number of query heads must be a multiple of the key heads");
  TORCH_CHECK(D % 8 == 0 && Dv % 8 == 0, "head sizes must be multiples of 8");
  TORCH_CHECK(T > 0, "there must be at least one key position");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "the last dimension must be contiguous");

  const int64_t group = H / Hkv;
  const int64_t sub = std::min<int64_t>(group, kMaxGroup);  // heads per pass (groups above 8 take several)
  const int64_t passes = (group + sub - 1) / sub;
  const int64_t lanes = B * Hkv * passes;
  const int64_t threads = at::get_num_threads();
  const int64_t max_chunks = std::max<int64_t>(1, T / kMinChunk);
  const int64_t chunks = std::min(max_chunks, std::max<int64_t>(1, (2 * threads + lanes - 1) / lanes));
  const int64_t chunk_len = (T + chunks - 1) / chunks;
  const int64_t items = lanes * chunks;

  // Per item: scores (sub x chunk_len), then max, sum (sub each) and output (sub x Dv).
  const int64_t item_floats = sub * (chunk_len + 2 + Dv);
  std::vector<float> scratch(items * item_floats);
  at::Tensor out = at::empty({B, H, 1, Dv}, q.options());
  const Cache keys = view_of(k), values = view_of(v);
  const float* qbase = q.data_ptr<float>();
  const float fscale = static_cast<float>(scale);
  const int64_t grain = B * Hkv * T * (D + Dv) < kSerialWork ? items : 1;

  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t chunk = item % chunks, lane = item / chunks;
      const int64_t pass = lane % passes, h = (lane / passes) % Hkv, b = lane / (passes * Hkv);
      const int64_t first = h * group + pass * sub, count = std::min(sub, group - pass * sub);
      const float* qs[kMaxGroup];
      for (int g = 0; g < count; ++g) qs[g] = qbase + b * q.stride(0) + (first + g) * q.stride(1);
      const int64_t t0 = chunk * chunk_len, t1 = std::min(T, t0 + chunk_len);
      float* s = scratch.data() + item * item_floats;
      float* maxes = s + sub * chunk_len;
      if (t0 >= t1) {  // an empty last chunk: contributes nothing
        std::fill(maxes, maxes + sub, -INFINITY);
        std::fill(maxes + sub, maxes + 2 * sub, 0.0f);
        continue;
      }
      kChunkFns[count - 1](qs, keys, values, b, h, t0, t1, D, Dv, fscale, s, maxes, maxes + sub, maxes + 2 * sub);
    }
  });

  // Merge the chunks of each head: rescale every partial to the overall max.
  float* o = out.data_ptr<float>();
  for (int64_t lane = 0; lane < lanes; ++lane) {
    const int64_t pass = lane % passes, h = (lane / passes) % Hkv, b = lane / (passes * Hkv);
    const int64_t first = h * group + pass * sub, count = std::min(sub, group - pass * sub);
    for (int64_t g = 0; g < count; ++g) {
      float top = -INFINITY;
      for (int64_t c = 0; c < chunks; ++c) top = std::max(top, scratch[(lane * chunks + c) * item_floats + sub * chunk_len + g]);
      float total = 0.0f;
      float* dst = o + (b * H + first + g) * Dv;
      std::fill(dst, dst + Dv, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const float* base = scratch.data() + (lane * chunks + c) * item_floats + sub * chunk_len;
        if (base[g] == -INFINITY) continue;
        const float w = std::exp(base[g] - top);
        total += w * base[sub + g];
        const float* part = base + 2 * sub + g * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] += w * part[d];
      }
      const float inv = 1.0f / total;
      for (int64_t d = 0; d < Dv; ++d) dst[d] *= inv;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mistralrs_cpu, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_cpu, CPU, m) {
  m.impl("decode_attention", &decode_attention);
}
