// Client authentication with API keys ("Authorization: Bearer <key>").
//
// The keys come from `[auth] api_keys_file`: one key per line, either the key
// itself or "sha256:<64 hex digits>" of it. Every key is kept only as its
// SHA-256 digest, so a presented token is hashed once and then compared, in
// constant time, against every stored digest: the time taken depends on the
// number of keys, never on which key matched or how many bytes of it did.
//
// Pure code apart from reading the file: no sockets, no clocks. KeySet is
// immutable after load() and is shared read-only by every worker thread.
// The token itself is never stored, copied or logged by this module.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tr::auth {

inline constexpr size_t kDigestBytes = 32;  // SHA-256
using Digest = std::array<uint8_t, kDigestBytes>;

// Bounds of the key file. check() costs one SHA-256 (~0.5 us with its
// context set-up) plus one 32-byte CRYPTO_memcmp per key (~40 ns each,
// measured on the dev VM): 1 key ~0.5 us, 16 keys ~1 us, kKeysMax ~40 us.
inline constexpr size_t kFileBytesMax = 1024 * 1024;  // larger files are rejected
inline constexpr size_t kKeysMax = 1024;              // more keys are rejected
inline constexpr size_t kKeyBytesMax = 4096;          // longer lines are rejected
inline constexpr std::string_view kDigestPrefix = "sha256:";

class KeySet {
 public:
  // Loads <path>: one key per line. Surrounding whitespace (SP, HTAB, CR) is
  // trimmed; blank lines and lines whose first non-blank byte is '#' are
  // ignored (so a plaintext key cannot start with '#'). A line starting with
  // "sha256:" (lowercase) must continue with exactly 64 hex digits (either
  // case) and is stored as that digest; any other line is a plaintext key,
  // stored as its SHA-256. A plaintext key must be visible ASCII or UTF-8
  // without spaces or control bytes (it could never arrive in a Bearer token
  // otherwise) and at most kKeyBytesMax bytes.
  //
  // Returns true and replaces *out on success; *warning is set (else cleared)
  // when the file is readable by every user ("PATH: ..."), which is allowed
  // but logged. Returns false with *error = "PATH:LINE: message" for a bad
  // line ("PATH: message" for the file as a whole: cannot open or read, not a
  // regular file, larger than kFileBytesMax, more than kKeysMax keys, no key at
  // all), leaving *out untouched. The file's bytes are wiped from memory
  // before returning. Never throws on bad input.
  static bool load(const std::string& path, KeySet* out, std::string* error, std::string* warning);

  // Same as load() for text already in memory; <name> is the PATH of
  // messages. No permission check (there is no file).
  static bool parse(std::string_view text, const std::string& name, KeySet* out,
                    std::string* error);

  size_t size() const { return digests_.size(); }

  // True if <presented> (the raw token after "Bearer ") is one of the keys:
  // it is hashed once, then its digest is compared with every stored digest
  // by digest_matches_any() (no early exit). False when hashing fails (fail
  // closed) and when the set is empty. Thread-safe (const, no shared state).
  bool check(std::string_view presented) const;

 private:
  std::vector<Digest> digests_;
};

// The comparison at the heart of check(), exposed so that its "every key,
// every time" property can be tested: compares <d> with each of <keys> in
// constant time (CRYPTO_memcmp, results OR-ed without branching) and returns
// whether any matched. Adds the number of digests compared to *compared when
// it is not null; that is always keys.size().
bool digest_matches_any(const Digest& d, std::span<const Digest> keys, size_t* compared);

// SHA-256 of <data> into *out. False only if the crypto library fails.
bool sha256(std::string_view data, Digest* out);

// Parses an Authorization header value: "Bearer" (any case), one or more SP,
// then the token, with optional leading/trailing SP or HTAB around the whole
// value. Returns true with *token viewing into <header_value>; returns false
// (and leaves *token alone) for another scheme, no separator, an empty token,
// or a token containing SP, HTAB or control bytes. Never allocates.
bool parse_bearer(std::string_view header_value, std::string_view* token);

}  // namespace tr::auth
