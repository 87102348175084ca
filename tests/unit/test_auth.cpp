// API keys: the key file, the constant-time check and the Bearer header.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch.hpp>
#include <cstdlib>
#include <string>
#include <vector>

#include "auth/auth.hpp"

using tr::auth::Digest;
using tr::auth::KeySet;
using tr::auth::parse_bearer;

namespace {

// Test vectors from `printf %s KEY | sha256sum`.
constexpr const char* kSha256Key1 =
    "8174099687a26621f4e2cdd7cc03b3dacedb3fb962255b1aafd033cabe831530";  // "key1"
constexpr const char* kSha256SkTest2 =
    "fb9488d16e346f6914b6aa30a6e6b9e815ca20b0df681dbe2288aa4b634efec4";  // "sk-test-2"
constexpr const char* kSha256Hello =
    "3c48591d8d098a4538f5e013dfcf406e948eac4d3277b10bf614e295d6068179";  // "héllo" (UTF-8)
constexpr const char* kSha256Empty =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";  // ""

std::string hex(const Digest& d) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

std::string upper(std::string s) {
  for (char& c : s) {
    if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 32);
  }
  return s;
}

// A scratch directory removed (with its files) at the end of the test.
struct TempDir {
  std::string path;
  std::vector<std::string> files;
  TempDir() {
    char tmpl[] = "/tmp/tr_auth_XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    for (const std::string& f : files)
      unlink(f.c_str());
    rmdir(path.c_str());
  }
  std::string write(const std::string& name, const std::string& text, mode_t mode) {
    std::string p = path + "/" + name;
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
    REQUIRE(fchmod(fd, mode) == 0);
    ::close(fd);
    files.push_back(p);
    return p;
  }
};

std::string parse_error(const std::string& text) {
  KeySet ks;
  std::string err;
  REQUIRE_FALSE(KeySet::parse(text, "keys.txt", &ks, &err));
  REQUIRE(ks.size() == 0);
  return err;
}

}  // namespace

TEST_CASE("sha256 matches sha256sum", "[auth]") {
  Digest d;
  REQUIRE(tr::auth::sha256("key1", &d));
  CHECK(hex(d) == kSha256Key1);
  REQUIRE(tr::auth::sha256("", &d));
  CHECK(hex(d) == kSha256Empty);
  REQUIRE(tr::auth::sha256("h\xc3\xa9llo", &d));
  CHECK(hex(d) == kSha256Hello);
}

TEST_CASE("plaintext and sha256 keys, comments and blank lines", "[auth]") {
  std::string text =
      "# tokenrelay API keys\n"
      "\n"
      "key1\n"
      "   \t  \n"
      "  # indented comment\n"
      "sha256:" +
      std::string(kSha256SkTest2) +
      "\r\n"
      "\tsha256:" +
      upper(kSha256Hello) +
      "  \n"
      "last-key-without-newline";
  KeySet ks;
  std::string err;
  REQUIRE(KeySet::parse(text, "keys.txt", &ks, &err));
  CHECK(ks.size() == 4);

  CHECK(ks.check("key1"));
  CHECK(ks.check("sk-test-2"));
  CHECK(ks.check("h\xc3\xa9llo"));  // digest given in upper-case hex
  CHECK(ks.check("last-key-without-newline"));

  CHECK_FALSE(ks.check(""));
  CHECK_FALSE(ks.check("key"));    // prefix
  CHECK_FALSE(ks.check("key12"));  // extension
  CHECK_FALSE(ks.check("KEY1"));   // keys are case-sensitive
  CHECK_FALSE(ks.check(" key1"));  // no trimming of the presented token
  CHECK_FALSE(ks.check("sha256:" + std::string(kSha256SkTest2)));  // the digest is not the key
  CHECK_FALSE(ks.check("# tokenrelay API keys"));
}

TEST_CASE("the presented token may be very long", "[auth]") {
  KeySet ks;
  std::string err;
  std::string long_key(tr::auth::kKeyBytesMax, 'k');
  REQUIRE(KeySet::parse("short\n" + long_key + "\n", "keys.txt", &ks, &err));
  CHECK(ks.check(long_key));
  std::string huge(1 << 20, 'k');
  CHECK_FALSE(ks.check(huge));
  huge[0] = 's';
  CHECK_FALSE(ks.check(huge));
}

TEST_CASE("key file errors name the line", "[auth]") {
  std::string h = kSha256Key1;
  CHECK(parse_error("ok\n# c\nsha256:" + h.substr(1) + "\n") ==
        "keys.txt:3: malformed digest: sha256: needs exactly 64 hex digits");
  CHECK(parse_error("sha256:" + h + "00\n") ==
        "keys.txt:1: malformed digest: sha256: needs exactly 64 hex digits");
  CHECK(parse_error("ok\n\nsha256:" + h.substr(1) + "g\n") ==
        "keys.txt:3: malformed digest: not a hex digit after sha256:");
  CHECK(parse_error("ok\nsha256:\n") == "keys.txt:2: empty key: sha256: needs 64 hex digits");
  CHECK(parse_error("ok\nsha256: " + h + "\n") ==
        "keys.txt:2: malformed digest: sha256: needs exactly 64 hex digits");
  CHECK(parse_error("a\nb\nc\nsha256:" + std::string(kSha256Empty) + "\n") ==
        "keys.txt:4: empty key: this is the digest of the empty string");
  CHECK(parse_error("ok\nsk two words\n") ==
        "keys.txt:2: key contains a space or control byte (it could never be presented)");
  CHECK(parse_error(std::string("ok\nnul\0byte\n", 12)) ==
        "keys.txt:2: key contains a space or control byte (it could never be presented)");
  CHECK(parse_error("ok\n" + std::string(tr::auth::kKeyBytesMax + 1, 'k') + "\n") ==
        "keys.txt:2: key longer than 4096 bytes");
  CHECK(parse_error("") == "keys.txt: no key (every request would be rejected)");
  CHECK(parse_error("# only comments\n\n") == "keys.txt: no key (every request would be rejected)");

  std::string many;
  for (size_t i = 0; i <= tr::auth::kKeysMax; ++i)
    many += "key" + std::to_string(i) + "\n";
  CHECK(parse_error(many) == "keys.txt: more than 1024 keys");
}

TEST_CASE("a failed parse leaves the previous set untouched", "[auth]") {
  KeySet ks;
  std::string err;
  REQUIRE(KeySet::parse("key1\n", "a", &ks, &err));
  REQUIRE_FALSE(KeySet::parse("key2\nsha256:zz\n", "b", &ks, &err));
  CHECK(err == "b:2: malformed digest: sha256: needs exactly 64 hex digits");
  CHECK(ks.size() == 1);
  CHECK(ks.check("key1"));
  CHECK_FALSE(ks.check("key2"));
}

TEST_CASE("load reads a file and warns when every user can read it", "[auth]") {
  TempDir dir;
  KeySet ks;
  std::string err, warn = "stale";

  std::string p = dir.write("keys", "key1\nsha256:" + std::string(kSha256SkTest2) + "\n", 0600);
  REQUIRE(KeySet::load(p, &ks, &err, &warn));
  CHECK(warn.empty());
  CHECK(ks.size() == 2);
  CHECK(ks.check("sk-test-2"));

  std::string q = dir.write("keys-644", "key1\n", 0644);
  KeySet ks2;
  REQUIRE(KeySet::load(q, &ks2, &err, &warn));
  CHECK(warn == q + ": readable by every user (mode 0644); consider chmod o-r");
  CHECK(ks2.check("key1"));

  std::string bad = dir.write("bad", "key1\n\nsha256:12\n", 0600);
  REQUIRE_FALSE(KeySet::load(bad, &ks2, &err, &warn));
  CHECK(err == bad + ":3: malformed digest: sha256: needs exactly 64 hex digits");

  REQUIRE_FALSE(KeySet::load(dir.path + "/missing", &ks2, &err, &warn));
  CHECK(err == dir.path + "/missing: cannot open: No such file or directory");

  REQUIRE_FALSE(KeySet::load(dir.path, &ks2, &err, &warn));
  CHECK(err == dir.path + ": not a regular file");

  if (geteuid() != 0) {  // root reads anything
    std::string unreadable = dir.write("unreadable", "key1\n", 0000);
    REQUIRE_FALSE(KeySet::load(unreadable, &ks2, &err, &warn));
    CHECK(err == unreadable + ": cannot open: Permission denied");
  }
  CHECK(ks2.size() == 1);  // failed loads left it alone
}

TEST_CASE("check compares the digest with every key, wherever the match is", "[auth]") {
  constexpr size_t kN = 37;
  std::vector<Digest> keys(kN);
  for (size_t i = 0; i < kN; ++i) {
    REQUIRE(tr::auth::sha256("key" + std::to_string(i), &keys[i]));
  }
  for (size_t at : {size_t{0}, size_t{1}, kN / 2, kN - 1}) {
    size_t compared = 0;
    CHECK(tr::auth::digest_matches_any(keys[at], keys, &compared));
    CHECK(compared == kN);
  }
  Digest other;
  REQUIRE(tr::auth::sha256("not a key", &other));
  size_t compared = 0;
  CHECK_FALSE(tr::auth::digest_matches_any(other, keys, &compared));
  CHECK(compared == kN);
  // A digest differing only in its last byte is not a match.
  Digest near = keys[3];
  near[tr::auth::kDigestBytes - 1] ^= 1;
  compared = 0;
  CHECK_FALSE(tr::auth::digest_matches_any(near, keys, &compared));
  CHECK(compared == kN);
  compared = 0;
  CHECK_FALSE(tr::auth::digest_matches_any(other, {}, &compared));
  CHECK(compared == 0);
  CHECK(tr::auth::digest_matches_any(keys[5], keys, nullptr));

  // KeySet::check goes through the same function: same answers.
  std::string text;
  for (size_t i = 0; i < kN; ++i)
    text += "key" + std::to_string(i) + "\n";
  KeySet ks;
  std::string err;
  REQUIRE(KeySet::parse(text, "k", &ks, &err));
  CHECK(ks.check("key0"));
  CHECK(ks.check("key36"));
  CHECK_FALSE(ks.check("key37"));
  CHECK_FALSE(KeySet().check("key0"));  // empty set: nothing matches
}

TEST_CASE("parse_bearer: scheme case-insensitive, one or more spaces", "[auth]") {
  std::string_view tok;
  REQUIRE(parse_bearer("Bearer sk-abc", &tok));
  CHECK(tok == "sk-abc");
  REQUIRE(parse_bearer("bearer sk-abc", &tok));
  CHECK(tok == "sk-abc");
  REQUIRE(parse_bearer("BEARER sk-abc", &tok));
  CHECK(tok == "sk-abc");
  REQUIRE(parse_bearer("bEaReR    sk-abc", &tok));
  CHECK(tok == "sk-abc");
  REQUIRE(parse_bearer(" \tBearer sk-abc= \t", &tok));  // OWS around the field value
  CHECK(tok == "sk-abc=");
  REQUIRE(parse_bearer("Bearer h\xc3\xa9llo", &tok));
  CHECK(tok == "h\xc3\xa9llo");

  std::string header = "Bearer " + std::string(64 * 1024, 'x');
  REQUIRE(parse_bearer(header, &tok));
  CHECK(tok.size() == 64 * 1024);
  CHECK(tok.data() == header.data() + 7);  // a view into the header: no copy
}

TEST_CASE("parse_bearer: other schemes and empty or malformed tokens", "[auth]") {
  std::string_view tok = "untouched";
  CHECK_FALSE(parse_bearer("", &tok));
  CHECK_FALSE(parse_bearer("Basic dXNlcjpwYXNz", &tok));
  CHECK_FALSE(parse_bearer("Digest username=x", &tok));
  CHECK_FALSE(parse_bearer("sk-abc", &tok));  // bare key, no scheme
  CHECK_FALSE(parse_bearer("Bearer", &tok));
  CHECK_FALSE(parse_bearer("Bearer ", &tok));
  CHECK_FALSE(parse_bearer("Bearer      ", &tok));
  CHECK_FALSE(parse_bearer("Bearersk-abc", &tok));
  CHECK_FALSE(parse_bearer("Bearer\tsk-abc", &tok));  // RFC 9110: 1*SP after the scheme
  CHECK_FALSE(parse_bearer("Bearer: sk-abc", &tok));
  CHECK_FALSE(parse_bearer("Bearer sk abc", &tok));
  CHECK_FALSE(
      parse_bearer("Bearer sk-\x01"
                   "abc",
                   &tok));
  CHECK_FALSE(
      parse_bearer("Bearer sk-\x7f"
                   "abc",
                   &tok));
  CHECK_FALSE(parse_bearer("Bear sk-abc", &tok));
  CHECK_FALSE(parse_bearer("Bearer\r\nX: y", &tok));
  CHECK(tok == "untouched");
}
