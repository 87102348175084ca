// INI file -> typed, validated tr::Config (include/tokenrelay/config.hpp).
//
// Every key lives in one declarative table in config.cpp (section, key, type,
// bounds, default, description, target field). Loading, validation, defaults
// and the reference in docs/CONFIG.md (reference_markdown()) all read that
// table, so they cannot drift apart. Pure code: no sockets; the only system
// calls are open/read of the file and getaddrinfo(3) for host names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tokenrelay/config.hpp"

namespace tr::config {

// Bounds of the loader itself.
inline constexpr size_t kFileBytesMax = 1024 * 1024;  // larger files are rejected
inline constexpr size_t kBackendsMax = 256;           // [backend NAME] sections
inline constexpr size_t kBackendNameBytesMax = 64;    // [A-Za-z0-9_.-]{1,64}
inline constexpr size_t kModelSectionsMax = 256;      // [model NAME] sections
inline constexpr size_t kModelNameBytesMax = 256;     // a model name in a list or [model NAME]
inline constexpr size_t kModelNamesMax = 64;          // names in one models / targets list

// Where and why loading failed. <line> is 1-based; 0 when the problem is about
// the file as a whole (cannot open, no backend).
struct Error {
  std::string file;
  int line = 0;
  std::string message;

  // "FILE:LINE: message", or "FILE: message" when line is 0.
  std::string str() const;
};

// Reads and validates the INI file at <path>. Returns true and replaces *out
// (out->path = path) on success; returns false and fills *err (the first
// problem in file order) on failure, leaving *out untouched. Never throws on
// bad input. Resolves host names with getaddrinfo(3), so it may block.
bool load_file(const std::string& path, tr::Config* out, Error* err);

// Same as load_file() for INI text already in memory; <name> is used as the
// FILE part of messages and as out->path.
bool load_string(const std::string& text, const std::string& name, tr::Config* out, Error* err);

// Parses "host:port", "[ipv6]:port" or "*:port" (all IPv4 addresses) into
// *out (out->text = text). Port is decimal 0..65535 (0 = ephemeral). host is a
// numeric address or a name resolved once with getaddrinfo(3); when a name has
// both, the first IPv4 address wins (vLLM binds 0.0.0.0 by default). Returns
// false with a one-line reason in *why (no trailing period) on failure.
bool parse_sockaddr(std::string_view text, tr::SockAddr* out, std::string* why);

// The key reference as a GitHub-flavoured markdown table, one row per key:
// section, key, type, default, bounds, description. docs/CONFIG.md embeds it.
std::string reference_markdown();

}  // namespace tr::config
