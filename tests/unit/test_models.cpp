// Unit tests for src/models: pools by model, LoRA adapters, aliases and their
// weighted split, unknown replicas, and the bounded metrics slots.
#include <catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "models/catalog.hpp"

namespace {

using tr::models::Catalog;
using tr::models::ReplicaModels;
using tr::models::Resolution;
using tr::models::SlotNames;

ReplicaModels serves(std::vector<std::pair<std::string, std::string>> entries) {
  ReplicaModels r;
  r.known = true;
  for (auto& [id, parent] : entries)
    r.entries.push_back({id, parent});
  return r;
}

std::vector<uint32_t> pool_of(const Resolution& r) {
  return std::vector<uint32_t>(r.pool.begin(), r.pool.end());
}

tr::ModelConfig alias(std::string name, std::vector<std::pair<std::string, uint32_t>> targets) {
  tr::ModelConfig m;
  m.name = std::move(name);
  for (auto& [t, w] : targets)
    m.targets.push_back({t, w});
  return m;
}

auto all_usable = [](uint32_t) { return true; };

}  // namespace

TEST_CASE("a request is ranked only among the replicas serving its model", "[models]") {
  SlotNames slots;
  auto cat = Catalog::build({serves({{"alpha", ""}}), serves({{"beta", ""}, {"beta-sql", "beta"}}),
                             serves({{"alpha", ""}})},
                            {}, &slots);
  Resolution a = cat->resolve(true, true, "alpha", 0.5, all_usable);
  CHECK(a.kind == Resolution::Kind::pool);
  CHECK(pool_of(a) == std::vector<uint32_t>{0, 2});
  CHECK(a.model->id == "alpha");
  CHECK(pool_of(cat->resolve(true, true, "beta-sql", 0.5, all_usable)) == std::vector<uint32_t>{1});
  CHECK(cat->find("beta-sql")->parent == "beta");
  CHECK(cat->base_models() == 2);
  CHECK(cat->available() == "alpha, beta, beta-sql");

  Resolution unknown = cat->resolve(true, true, "gamma", 0.5, all_usable);
  CHECK(unknown.kind == Resolution::Kind::unknown_model);
  CHECK(unknown.slot == tr::models::kOtherSlot);
  CHECK(cat->resolve(true, false, "", 0.5, all_usable).kind == Resolution::Kind::model_required);
  // Not a JSON body: anything may be a target (the replica owns the answer).
  CHECK(pool_of(cat->resolve(false, false, "", 0.5, all_usable)).size() == 3);
  // Metrics slots are stable names.
  CHECK(slots.name(a.slot) == "alpha");
}

TEST_CASE("one base model: no model field is fine and unknown replicas join the pool", "[models]") {
  SlotNames slots;
  auto cat = Catalog::build(
      {serves({{"base", ""}, {"sql", "base"}}), ReplicaModels{}, serves({{"base", ""}})}, {},
      &slots);
  Resolution r = cat->resolve(true, false, "", 0.1, all_usable);
  REQUIRE(r.kind == Resolution::Kind::pool);
  CHECK(r.model->id == "base");
  CHECK(pool_of(r) == std::vector<uint32_t>{0, 1, 2});
  // An unknown name goes to the replicas we know nothing about.
  CHECK(pool_of(cat->resolve(true, true, "other", 0.1, all_usable)) == std::vector<uint32_t>{1});
}

TEST_CASE("several base models: an unknown replica is not in their pools", "[models]") {
  SlotNames slots;
  auto cat =
      Catalog::build({serves({{"a", ""}}), ReplicaModels{}, serves({{"b", ""}})}, {}, &slots);
  CHECK(pool_of(cat->resolve(true, true, "a", 0.1, all_usable)) == std::vector<uint32_t>{0});
  CHECK(pool_of(cat->resolve(true, true, "zzz", 0.1, all_usable)) == std::vector<uint32_t>{1});
  // Nothing known at all: every replica, whatever the body.
  auto empty = Catalog::build({ReplicaModels{}, ReplicaModels{}}, {}, &slots);
  CHECK(pool_of(empty->resolve(true, false, "", 0.1, all_usable)).size() == 2);
  CHECK(pool_of(empty->resolve(true, true, "x", 0.1, all_usable)).size() == 2);
}

TEST_CASE("an alias splits by weight and names its target for the rewrite", "[models]") {
  SlotNames slots;
  auto cat = Catalog::build({serves({{"m", ""}}), serves({{"m-rc", ""}})},
                            {alias("chat", {{"m", 90}, {"m-rc", 10}})}, &slots);
  std::map<std::string, int> got;
  for (int i = 0; i < 1000; ++i) {
    Resolution r = cat->resolve(true, true, "chat", (i + 0.5) / 1000.0, all_usable);
    REQUIRE(r.kind == Resolution::Kind::pool);
    got[std::string(r.rewrite)]++;
    CHECK(r.pool.size() == 1);
    CHECK(slots.name(r.slot) == "chat");
  }
  CHECK(got["m"] == 900);
  CHECK(got["m-rc"] == 100);
  // The chosen target has no usable replica: the other one takes it.
  auto only_first = [](uint32_t r) { return r == 0; };
  for (double pick : {0.0, 0.5, 0.95, 0.999})
    CHECK(cat->resolve(true, true, "chat", pick, only_first).rewrite == "m");
  CHECK(cat->available() == "m, m-rc, chat");
}

TEST_CASE("an alias whose targets are not served is an unknown model", "[models]") {
  SlotNames slots;
  auto cat =
      Catalog::build({serves({{"m", ""}})},
                     {alias("x", {{"nope", 1}}), alias("y", {{"nope", 5}, {"m", 1}})}, &slots);
  CHECK(cat->resolve(true, true, "x", 0.3, all_usable).kind == Resolution::Kind::unknown_model);
  // Unserved targets take no share.
  for (double pick : {0.0, 0.5, 0.99})
    CHECK(cat->resolve(true, true, "y", pick, all_usable).rewrite == "m");
}

TEST_CASE("metrics slots are bounded; configured names come first", "[models]") {
  SlotNames slots;
  std::vector<ReplicaModels> reps(1);
  reps[0].known = true;
  for (int i = 0; i < 200; ++i)
    reps[0].entries.push_back({"model-" + std::to_string(1000 + i), ""});
  auto cat = Catalog::build(reps, {alias("zz-alias", {{"model-1100", 1}})}, &slots);
  CHECK(slots.size() == tr::models::kStatsSlots);
  CHECK(slots.name(0) == "zz-alias");
  CHECK(slots.name(1) == "model-1100");
  CHECK(cat->find("model-1199")->slot == tr::models::kOtherSlot);
  // The same names keep their slots in later catalogs.
  auto again = Catalog::build(reps, {alias("zz-alias", {{"model-1100", 1}})}, &slots);
  CHECK(again->find("model-1100")->slot == 1);
  CHECK(slots.size() == tr::models::kStatsSlots);
}
