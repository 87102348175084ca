// Minimal JSON string escaping for the bodies the proxy writes itself (error
// objects, /status, /v1/models). Parsing uses simdjson elsewhere.
#pragma once

#include <string>
#include <string_view>

namespace tr {

// Appends <s> to <out> as the inside of a JSON string (no surrounding quotes).
inline void json_escape_append(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  for (char c : s) {
    unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += kHex[u >> 4];
          out += kHex[u & 15];
        } else {
          out += c;
        }
    }
  }
}

}  // namespace tr
