// Prompt-chunk products of 8-bit quantized weights with Intel AMX, float32-grade results.
//
// A prompt chunk of hundreds of rows is compute-bound. oneDNN's bfloat16 matmul runs it on AMX
// about five times faster than float32, but its bfloat16 inputs and results cost 8-bit weights
// their precision: SmolLM2's Q8_0 perplexity rose +1.0 % over the bf16 model's (fp32 compute)
// where float32 products give +0.2 %. AMX accumulates in float32, so here activations and weights
// are each split into two bfloat16 parts (value and remainder, 16 significant bits together) and
// three of the four part products summed: results within ~1e-5 of exact, the same perplexity as
// float32 to five digits, at about twice float32's speed on a 2-core Xeon VM (bench-qwen3 q8_0
// prefill 730-745 -> 910-1,030 tok/s back to back, a busy hour).
//
// The weight stays in the streaming kernels' 8-bit layout (cpu_matvec.cpp). A few blocks of 32
// output rows at a time are dequantized (scale * q + bias in float32, then split) into the
// pair-interleaved layout AMX reads, and every 32 activation rows are multiplied with them while
// they sit in L2, so nothing the size of the weight is ever unpacked. Tiles: four 16x16 float32
// results (32 rows x 32 columns), two 16-row slices of activations, two 16-column slices of the
// weight.
//
// x86-64 Linux with AMX-BF16 only (Sapphire Rapids and later); `amx_ready` says whether it runs.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <cpuid.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kRows = 4;        // output rows interleaved in the 8-bit layout (kRows in cpu_matvec.cpp)
constexpr int kTile = 16;       // rows of a tile; 16 float32 or 32 bfloat16 per tile row
constexpr int64_t kBlock = 32;  // output rows and columns per block of four result tiles

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Whether this CPU has AMX-BF16 and Linux lets this process use the tile registers (permission is
// asked once, process-wide, as oneDNN also does).
bool request_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), bf16 = d & (1u << 22);
  if (!tile || !bf16) return false;
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

bool amx_ready() {
  static const bool ready = request_amx();
  return ready;
}

inline uint16_t bf16_bits(float f) {  // nearest, ties to even (finite values)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// The float32 values of a bfloat16 vector's 32 lanes: lanes 0-15 and 16-31.
__attribute__((target("avx512f,avx512bw"))) inline void widen(__m512i bf16, __m512* first, __m512* last) {
  *first = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bf16)), 16));
  *last = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bf16, 1)), 16));
}

// Rows [n0, n0 + 32) of the weight as AMX weight tiles, two per 32 columns of K: for tile t and
// step s, 16 rows of pairs (k = 32 s + 2 p + e) by 16 columns (n = n0 + 16 t + j), pair-interleaved.
// `out` holds the bfloat16 values' tiles, then (2 * K / 32 tiles on) the remainders' tiles. Each
// weight row's 32 values of a step are 32 bfloat16 in order, that is 16 pairs, one per tile row.
// Every AMX CPU has AVX-512 BF16, whose conversion rounds to nearest even.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void dequantize_block(
    const uint8_t* q, const uint16_t* scale_bias, int64_t n0, int64_t K, int64_t group, uint16_t* out) {
  const int64_t chunks = K / 32, groups = K / group, rest_offset = 2 * chunks * kTile * kTile;  // in pairs
  const __m512i tile_rows = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(kTile));
  for (int64_t r = 0; r < kBlock; ++r) {
    const int64_t n = n0 + r, blk = n / kRows, row = n % kRows, t = r / kTile, j = r % kTile;
    const uint8_t* values = q + blk * chunks * kRows * 32 + row * 32;
    const uint16_t* sb = scale_bias + blk * groups * 2 * kRows;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t g = c * 32 / group;
      const __m512 scale = _mm512_set1_ps(half_to_float(sb[g * 8 + row]));
      const __m512 bias = _mm512_set1_ps(half_to_float(sb[g * 8 + 4 + row]));
      const auto* v = reinterpret_cast<const __m128i*>(values + c * kRows * 32);
      const __m512 first = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(v))), scale, bias);
      const __m512 last = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(v + 1))), scale, bias);
      const __m512i value = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(last, first));
      __m512 first_value, last_value;
      widen(value, &first_value, &last_value);
      const __m512i rest = reinterpret_cast<__m512i>(
          _mm512_cvtne2ps_pbh(_mm512_sub_ps(last, last_value), _mm512_sub_ps(first, first_value)));
      int32_t* tile = reinterpret_cast<int32_t*>(out + (t * chunks + c) * kTile * 32);  // (16 pairs, 16 columns)
      _mm512_i32scatter_epi32(tile + j, tile_rows, value, 4);
      _mm512_i32scatter_epi32(tile + rest_offset + j, tile_rows, rest, 4);
    }
  }
}

// Rows [32 mb, 32 mb + 32) of the result, columns [n0, n0 + 32). a: the activations' two bfloat16
// parts, (padded M, K) each, the remainders `a_rest` elements after the values; b: that block of
// the weight (dequantize_block).
__attribute__((target("amx-tile,amx-bf16"))) void multiply_block(const uint16_t* a, int64_t a_rest, int64_t mb,
                                                                  int64_t K, const uint16_t* b, float* out, int64_t N,
                                                                  int64_t n0) {
  const int64_t chunks = K / 32, a_stride = K * 2, out_stride = N * 4;
  const uint16_t* a0 = a + mb * kBlock * K;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t c = 0; c < chunks; ++c) {
    // Activations' bfloat16 parts times the weight's: value x value, value x remainder, remainder
    // x value (the fourth product is below float32's rounding of the sum).
    for (int term = 0; term < 3; ++term) {
      const uint16_t* ap = a0 + (term == 2 ? a_rest : 0);
      const uint16_t* bp = b + (term == 1 ? 2 * chunks * kTile * 32 : 0);
      if (term != 1) {
        _tile_loadd(4, ap + c * 32, a_stride);
        _tile_loadd(5, ap + kTile * K + c * 32, a_stride);
      }
      _tile_loadd(6, bp + c * kTile * 32, 64);
      _tile_loadd(7, bp + (chunks + c) * kTile * 32, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  float* o = out + mb * kBlock * N + n0;
  _tile_stored(0, o, out_stride);
  _tile_stored(1, o + kTile, out_stride);
  _tile_stored(2, o + kTile * N, out_stride);
  _tile_stored(3, o + kTile * N + kTile, out_stride);
}

// Eight tiles of 16 rows x 64 bytes. Kept in static memory: built on the stack right before
// ldtilecfg, GCC 12 dropped the stores (it does not see the instruction read them).
const TileConfig kConfig = [] {
  TileConfig config;
  for (int i = 0; i < 8; ++i) {
    config.rows[i] = kTile;
    config.colsb[i] = 64;
  }
  return config;
}();

__attribute__((target("amx-tile"))) void configure_tiles() { _tile_loadconfig(&kConfig); }

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

at::Tensor prompt_product_q8(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale_bias, int64_t group,
                             int64_t in_features) {
  TORCH_CHECK(amx_ready(), "prompt_product_q8 needs AMX-BF16 (see amx_ready)");
  const int64_t K = in_features, N = q.size(0);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(1) == K && x.is_contiguous(),
              "activations must be contiguous float32 (M, ", K, ")");
  TORCH_CHECK(N % kBlock == 0 && K % 32 == 0 && K % group == 0 && group % 32 == 0,
              "prompt_product_q8 takes multiples of 32 output rows and of 32 columns");
  TORCH_CHECK(q.scalar_type() == at::kByte && q.is_contiguous() && q.dim() == 2 && q.size(1) == K,
              "values must be contiguous uint8 in the 8-bit kernel layout");
  TORCH_CHECK(scale_bias.scalar_type() == at::kHalf && scale_bias.is_contiguous() &&
                  scale_bias.numel() == N * (K / group) * 2,
              "scales and biases must be contiguous float16 (N/4, K/group, 8)");
  const int64_t M = x.size(0), m_blocks = (M + kBlock - 1) / kBlock, padded = m_blocks * kBlock;
  // Activations as two bfloat16 parts (value and remainder), rows padded with zeros to whole tiles.
  const int64_t a_rest = padded * K;
  std::vector<uint16_t> a(2 * a_rest, 0);
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin * K; i < end * K; ++i) {
      a[i] = bf16_bits(xp[i]);
      a[a_rest + i] = bf16_bits(xp[i] - bf16_to_float(a[i]));
    }
  });
  at::Tensor out = at::empty({padded, N}, x.options());
  float* op = out.data_ptr<float>();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  auto sb = reinterpret_cast<const uint16_t*>(scale_bias.data_ptr<at::Half>());
  // Blocks of 32 weight rows are dequantized a few at a time, about 1 MB, which stays in L2 while
  // every 32 activation rows pass over it: the activations are read once per group, not once per
  // block (for a 576x1536 weight and 512 rows, 14 MB instead of 54). On the 2-core VM that was no
  // faster: the tiles' throughput bounds these products there, not memory.
  const int64_t block_elems = 2 * 2 * K * kTile, blocks = N / kBlock;  // two parts, two tiles per step
  const int64_t per_group = std::max<int64_t>(1, std::min<int64_t>(8, (1 << 20) / (block_elems * 2)));
  const int64_t n_groups = (blocks + per_group - 1) / per_group;
  at::parallel_for(0, n_groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint16_t> b(per_group * block_elems);
    configure_tiles();
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t first = grp * per_group, count = std::min(per_group, blocks - first);
      for (int64_t i = 0; i < count; ++i)
        dequantize_block(qp, sb, (first + i) * kBlock, K, group, b.data() + i * block_elems);
      for (int64_t mb = 0; mb < m_blocks; ++mb)
        for (int64_t i = 0; i < count; ++i)
          multiply_block(a.data(), a_rest, mb, K, b.data() + i * block_elems, op, N, (first + i) * kBlock);
    }
    release_tiles();
  });
  return padded == M ? out : out.narrow(0, 0, M);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mistralrs_cpu, m) {
  m.def("amx_ready() -> bool", &amx_ready);
  m.def("prompt_product_q8(Tensor x, Tensor q, Tensor scale_bias, int group, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_cpu, CPU, m) {
  m.impl("prompt_product_q8", &prompt_product_q8);
}
