#include "auth/auth.hpp"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/assert.hpp"

namespace tr::auth {

namespace {

bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\r';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back()))
    s.remove_suffix(1);
  return s;
}

// Bytes that cannot be part of a Bearer token: SP, HTAB and other controls, DEL.
bool is_token_byte(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return u > 0x20 && u != 0x7f;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool ascii_ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    unsigned char x = static_cast<unsigned char>(a[i]);
    unsigned char y = static_cast<unsigned char>(b[i]);
    if (x >= 'A' && x <= 'Z') x = static_cast<unsigned char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<unsigned char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

// SHA-256 fetched once: an explicit fetch spares OpenSSL 3 the method-store
// lookup (and its lock) that EVP_sha256() costs on every digest. Process
// lifetime; never freed. Falls back to the implicit method if fetching fails.
const EVP_MD* sha256_md() {
  static const EVP_MD* md = [] {
    EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched ? static_cast<const EVP_MD*>(fetched) : EVP_sha256();
  }();
  return md;
}

void set_line_error(std::string* error, const std::string& name, size_t line, const char* msg) {
  *error = name + ":" + std::to_string(line) + ": " + msg;
}

// Wipes a buffer that held key material (OPENSSL_cleanse is not optimised out).
struct Wipe {
  std::string* s;
  ~Wipe() {
    if (!s->empty()) OPENSSL_cleanse(s->data(), s->size());
  }
};

}  // namespace

bool sha256(std::string_view data, Digest* out) {
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), out->data(), &len, sha256_md(), nullptr) != 1) {
    return false;
  }
  TR_ASSERT(len == kDigestBytes);
  return true;
}

bool digest_matches_any(const Digest& d, std::span<const Digest> keys, size_t* compared) {
  // CRYPTO_memcmp is constant time for a given length and is an opaque call,
  // so the compiler cannot stop the loop once a match is found; the results
  // are combined with OR, not with a branch.
  uint32_t hit = 0;
  for (const Digest& k : keys) {
    hit |= static_cast<uint32_t>(CRYPTO_memcmp(d.data(), k.data(), kDigestBytes) == 0);
  }
  if (compared) *compared += keys.size();
  return hit != 0;
}

bool KeySet::check(std::string_view presented) const {
  Digest d;
  if (!sha256(presented, &d)) return false;
  bool ok = digest_matches_any(d, digests_, nullptr);
  OPENSSL_cleanse(d.data(), d.size());
  return ok;
}

bool KeySet::parse(std::string_view text, const std::string& name, KeySet* out,
                   std::string* error) {
  TR_ASSERT(out != nullptr);
  TR_ASSERT(error != nullptr);
  Digest empty_digest;
  if (!sha256(std::string_view(), &empty_digest)) {
    *error = name + ": SHA-256 is not available from libcrypto";
    return false;
  }
  std::vector<Digest> digests;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t end = nl == std::string_view::npos ? text.size() : nl;
    std::string_view line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (line.empty() || line.front() == '#') continue;
    if (digests.size() == kKeysMax) {
      *error = name + ": more than " + std::to_string(kKeysMax) + " keys";
      return false;
    }
    Digest d;
    if (line.starts_with(kDigestPrefix)) {
      std::string_view hex = line.substr(kDigestPrefix.size());
      if (hex.empty()) {
        set_line_error(error, name, line_no, "empty key: sha256: needs 64 hex digits");
        return false;
      }
      if (hex.size() != 2 * kDigestBytes) {
        set_line_error(error, name, line_no,
                       "malformed digest: sha256: needs exactly 64 hex digits");
        return false;
      }
      for (size_t i = 0; i < kDigestBytes; ++i) {
        int hi = hex_value(hex[2 * i]);
        int lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
          set_line_error(error, name, line_no, "malformed digest: not a hex digit after sha256:");
          return false;
        }
        d[i] = static_cast<uint8_t>(hi << 4 | lo);
      }
      if (d == empty_digest) {
        set_line_error(error, name, line_no, "empty key: this is the digest of the empty string");
        return false;
      }
    } else {
      if (line.size() > kKeyBytesMax) {
        set_line_error(error, name, line_no, "key longer than 4096 bytes");
        return false;
      }
      for (char c : line) {
        if (!is_token_byte(c)) {
          set_line_error(error, name, line_no,
                         "key contains a space or control byte (it could never be presented)");
          return false;
        }
      }
      if (!sha256(line, &d)) {
        *error = name + ": SHA-256 failed in libcrypto";
        return false;
      }
    }
    digests.push_back(d);
  }
  if (digests.empty()) {
    *error = name + ": no key (every request would be rejected)";
    return false;
  }
  out->digests_ = std::move(digests);
  return true;
}

bool KeySet::load(const std::string& path, KeySet* out, std::string* error, std::string* warning) {
  TR_ASSERT(warning != nullptr);
  warning->clear();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    *error = path + ": cannot open: " + std::strerror(errno);
    return false;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *error = path + ": cannot stat: " + std::strerror(errno);
    ::close(fd);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    *error = path + ": not a regular file";
    ::close(fd);
    return false;
  }
  if (static_cast<uint64_t>(st.st_size) > kFileBytesMax) {
    *error = path + ": larger than " + std::to_string(kFileBytesMax) + " bytes";
    ::close(fd);
    return false;
  }
  std::string text;
  Wipe wipe{&text};
  text.resize(static_cast<size_t>(st.st_size) + 1);  // +1 sees a file that grew
  size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::read(fd, text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *error = path + ": cannot read: " + std::strerror(errno);
      ::close(fd);
      return false;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > static_cast<size_t>(st.st_size)) {
    *error = path + ": the file changed while being read";
    return false;
  }
  text.resize(got);
  if (!parse(text, path, out, error)) return false;
  if (st.st_mode & S_IROTH) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    *warning = path + ": readable by every user (mode " + mode + "); consider chmod o-r";
  }
  return true;
}

bool parse_bearer(std::string_view header_value, std::string_view* token) {
  constexpr std::string_view kScheme = "bearer";
  std::string_view v = header_value;
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
    v.remove_suffix(1);
  if (v.size() <= kScheme.size() || !ascii_ieq(v.substr(0, kScheme.size()), kScheme)) {
    return false;
  }
  v.remove_prefix(kScheme.size());
  if (v.front() != ' ') return false;  // "Bearerx" is another scheme
  while (!v.empty() && v.front() == ' ')
    v.remove_prefix(1);
  if (v.empty()) return false;
  for (char c : v) {
    if (!is_token_byte(c)) return false;
  }
  *token = v;
  return true;
}

}  // namespace tr::auth
