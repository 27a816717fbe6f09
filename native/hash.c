/* CRC32C (Castagnoli) with an SSE4.2 path chosen at run time, and a 64-bit string hash. */
#include <string.h>

#include "carmp_native.h"

#define CRC32C_POLY_REFLECTED 0x82F63B78u

static uint32_t crc_table[256];
static int crc_table_ready;

static void build_crc_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ ((c & 1u) ? CRC32C_POLY_REFLECTED : 0u);
        crc_table[i] = c;
    }
    __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_software(uint32_t crc, const uint8_t *p, size_t n) {
    if (!__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE)) build_crc_table();
    while (n--) crc = (crc >> 8) ^ crc_table[(crc ^ *p++) & 0xffu];
    return crc;
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc32c_hardware(uint32_t crc, const uint8_t *p,
                                                                  size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--) crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

int carmp_crc32c_hardware(void) { return __builtin_cpu_supports("sse4.2") ? 1 : 0; }
#else
int carmp_crc32c_hardware(void) { return 0; }
#endif

uint32_t carmp_crc32c(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = data;
    crc = ~crc;
#if defined(__x86_64__)
    if (carmp_crc32c_hardware()) return ~crc32c_hardware(crc, p, n);
#endif
    return ~crc32c_software(crc, p, n);
}

/* ---- hash64: 8 bytes a round, each word scrambled by a multiply-xorshift ---- */

static const uint64_t GOLDEN = 0x9e3779b97f4a7c15ULL;
static const uint64_t SCRAMBLE = 0xd6e8feb86659fd93ULL;

static inline uint64_t scramble(uint64_t x) {
    x ^= x >> 32;
    x *= SCRAMBLE;
    x ^= x >> 32;
    x *= SCRAMBLE;
    x ^= x >> 32;
    return x;
}

static inline uint64_t rotate_left(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

uint64_t carmp_hash64(const void *data, size_t n, uint64_t seed) {
    const uint8_t *p = data;
    uint64_t h = seed ^ ((uint64_t)n * GOLDEN);
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        h = rotate_left(h ^ scramble(word), 27) * GOLDEN;
        p += 8;
        n -= 8;
    }
    uint64_t tail = 0;
    if (n) memcpy(&tail, p, n);
    h ^= scramble(tail ^ ((uint64_t)n << 56));
    return scramble(h);
}
