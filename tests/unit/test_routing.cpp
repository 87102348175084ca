// Routing policies (src/routing): pure ranking, no sockets.
#include <catch.hpp>
#include <map>
#include <vector>

#include "routing/policy.hpp"

using tr::routing::Candidate;

TEST_CASE("least in-flight ranks by load and skips unusable replicas", "[routing]") {
  tr::routing::LeastInflight p;
  std::vector<Candidate> c(4);
  for (uint32_t i = 0; i < 4; ++i)
    c[i].index = i;
  c[0].inflight = 5;
  c[1].inflight = 1;
  c[2].inflight = 3;
  c[3].usable = false;
  uint32_t out[4];
  size_t n = p.rank({}, c, out);
  REQUIRE(n == 3);
  CHECK(out[0] == 1);
  CHECK(out[1] == 2);
  CHECK(out[2] == 0);
}

TEST_CASE("equal loads are taken in turn (round-robin tie-break)", "[routing]") {
  tr::routing::LeastInflight p;
  std::vector<Candidate> c(3);
  for (uint32_t i = 0; i < 3; ++i)
    c[i].index = i;
  std::map<uint32_t, int> first;
  for (int k = 0; k < 300; ++k) {
    uint32_t out[3];
    REQUIRE(p.rank({}, c, out) == 3);
    ++first[out[0]];
  }
  CHECK(first[0] == 100);
  CHECK(first[1] == 100);
  CHECK(first[2] == 100);
}

TEST_CASE("weight scales load; nothing usable ranks nothing", "[routing]") {
  tr::routing::LeastInflight p;
  std::vector<Candidate> c(2);
  c[0].index = 0;
  c[0].inflight = 4;
  c[0].weight = 4.0;  // effective 1
  c[1].index = 1;
  c[1].inflight = 2;  // effective 2
  uint32_t out[2];
  REQUIRE(p.rank({}, c, out) == 2);
  CHECK(out[0] == 0);
  c[0].usable = c[1].usable = false;
  CHECK(p.rank({}, c, out) == 0);
}
