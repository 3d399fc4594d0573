// SPDX-License-Identifier: MIT
// utf8.c -- strict UTF-8 validation, lossy decoding with U+FFFD exactly as
// Rust's String::from_utf8_lossy (one U+FFFD per maximal ill-formed
// subpart, Unicode 3.9 / Table 3-7), and the GPT-2 byte-level alphabet that
// byte-level BPE uses to spell arbitrary bytes as printable characters.
#include <string.h>

#include "tokenizer/internal.h"

// bytes_to_unicode() of GPT-2: printable Latin-1 bytes map to themselves,
// the other 68 bytes to U+0100.. in byte order.
#define R(a) a, a + 1, a + 2, a + 3, a + 4, a + 5, a + 6, a + 7
const uint16_t tok_byte_to_cp[256] = {
    // 0x00-0x20 -> U+0100..U+0120
    0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10A, 0x10B, 0x10C,
    0x10D, 0x10E, 0x10F, 0x110, 0x111, 0x112, 0x113, 0x114, 0x115, 0x116, 0x117, 0x118, 0x119,
    0x11A, 0x11B, 0x11C, 0x11D, 0x11E, 0x11F, 0x120,
    // 0x21-0x7E -> themselves
    0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, R(0x28), R(0x30), R(0x38), R(0x40), R(0x48), R(0x50),
    R(0x58), R(0x60), R(0x68), R(0x70), 0x78, 0x79, 0x7A, 0x7B, 0x7C, 0x7D, 0x7E,
    // 0x7F-0xA0 -> U+0121..U+0142
    0x121, 0x122, 0x123, 0x124, 0x125, 0x126, 0x127, 0x128, 0x129, 0x12A, 0x12B, 0x12C, 0x12D,
    0x12E, 0x12F, 0x130, 0x131, 0x132, 0x133, 0x134, 0x135, 0x136, 0x137, 0x138, 0x139, 0x13A,
    0x13B, 0x13C, 0x13D, 0x13E, 0x13F, 0x140, 0x141, 0x142,
    // 0xA1-0xAC -> themselves
    0xA1, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC,
    // 0xAD -> U+0143
    0x143,
    // 0xAE-0xFF -> themselves
    0xAE, 0xAF, R(0xB0), R(0xB8), R(0xC0), R(0xC8), R(0xD0), R(0xD8), R(0xE0), R(0xE8), R(0xF0),
    R(0xF8)};
#undef R

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) {
        if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || cp >= 0xAE) return (int)cp;
        return -1;
    }
    if (cp <= 0x120) return (int)(cp - 0x100);        // bytes 0x00-0x20
    if (cp <= 0x142) return (int)(cp - 0x121 + 0x7F); // bytes 0x7F-0xA0
    if (cp == 0x143) return 0xAD;
    return -1;
}

size_t tok_utf8_bad_prefix(const uint8_t *s, size_t n, size_t *cp_len) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp_len = 1;
        return 0;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF; // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 1; // 0x80-0xC1, 0xF5-0xFF never start a character
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) return i; // truncated: the whole valid prefix is one subpart
        uint8_t b = s[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) return i;
    }
    *cp_len = need;
    return 0;
}

size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len;
        if (tok_utf8_bad_prefix(s + i, n - i, &len) != 0) return i;
        i += len;
    }
    return n;
}

size_t tok_utf8_lossy(const uint8_t *s, size_t n, uint8_t *out) {
    size_t o = 0, i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            out[o++] = s[i++];
            continue;
        }
        size_t len, bad = tok_utf8_bad_prefix(s + i, n - i, &len);
        if (bad) {
            out[o++] = 0xEF;
            out[o++] = 0xBF;
            out[o++] = 0xBD;
            i += bad;
        } else {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        }
    }
    return o;
}

size_t tok_utf8_decode(const uint8_t *s, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xE0) {
        *cp = (uint32_t)(c & 0x1F) << 6 | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        *cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
        return 3;
    }
    *cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
          (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    return 4;
}

size_t tok_utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}
