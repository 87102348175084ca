// Poller tests against fake HTTP servers on 127.0.0.1 (port 0), each in its own
// thread: healthy, 503, accepts-and-never-answers, and a refused port.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/clock.hpp"
#include "poller/http_client.hpp"
#include "poller/models.hpp"
#include "poller/poller.hpp"
#include "scores/table.hpp"
#include "tokenrelay/config.hpp"

namespace {

using tr::poller::ModelEntry;

// ---------------------------------------------------------------------------
// A fake HTTP/1.1 server: one thread, poll(2) over every connection, keep-alive.
class FakeServer {
 public:
  enum class Framing { length, chunked, close };
  struct Reply {
    int status = 200;
    std::string body;
    Framing framing = Framing::length;
  };

  // hang: accept connections and never read or answer.
  explicit FakeServer(bool hang = false) : hang_(hang) {
    lfd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(lfd_ >= 0);
    int one = 1;
    setsockopt(lfd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;
    REQUIRE(::bind(lfd_, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
    REQUIRE(::listen(lfd_, 64) == 0);
    socklen_t len = sizeof sin;
    REQUIRE(getsockname(lfd_, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
    port_ = ntohs(sin.sin_port);
    REQUIRE(pipe2(stop_pipe_, O_CLOEXEC) == 0);
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeServer() {
    ssize_t n = ::write(stop_pipe_[1], "x", 1);
    (void)n;
    thread_.join();
    ::close(stop_pipe_[0]);
    ::close(stop_pipe_[1]);
    ::close(lfd_);
  }
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  uint16_t port() const { return port_; }
  void route(const std::string& path, Reply r) {
    std::lock_guard<std::mutex> lock(mu_);
    routes_[path] = std::move(r);
  }
  // Close the connection after every response, without saying so in the headers
  // (what a server does when its keep-alive idle timer fires).
  void close_after_each(bool v) { close_after_each_.store(v); }
  int accepted() const { return accepted_.load(); }
  int requests() const { return requests_.load(); }
  std::string last_head() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_head_;
  }

 private:
  void loop() {
    std::map<int, std::string> conns;
    std::vector<pollfd> fds;
    for (;;) {
      fds.clear();
      fds.push_back(pollfd{stop_pipe_[0], POLLIN, 0});
      fds.push_back(pollfd{lfd_, POLLIN, 0});
      if (!hang_) {
        for (const auto& kv : conns)
          fds.push_back(pollfd{kv.first, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents != 0) break;
      if (fds[1].revents & POLLIN) {
        int c = accept4(lfd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c >= 0) {
          conns[c];
          accepted_.fetch_add(1);
        }
      }
      for (size_t k = 2; k < fds.size(); ++k) {
        if (fds[k].revents != 0) serve(fds[k].fd, &conns);
      }
    }
    for (const auto& kv : conns)
      ::close(kv.first);
  }

  void serve(int fd, std::map<int, std::string>* conns) {
    char tmp[4096];
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) {
      ::close(fd);
      conns->erase(fd);
      return;
    }
    std::string& buf = (*conns)[fd];
    buf.append(tmp, static_cast<size_t>(n));
    size_t end;
    while ((end = buf.find("\r\n\r\n")) != std::string::npos) {
      std::string head = buf.substr(0, end);
      buf.erase(0, end + 4);
      requests_.fetch_add(1);
      size_t sp1 = head.find(' ');
      size_t sp2 = head.find(' ', sp1 + 1);
      std::string path = head.substr(sp1 + 1, sp2 - sp1 - 1);
      Reply r{404, "not found", Framing::length};
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_head_ = head;
        auto it = routes_.find(path);
        if (it != routes_.end()) r = it->second;
      }
      send_all(fd, render(r));
      if (r.framing == Framing::close || close_after_each_.load()) {
        ::close(fd);
        conns->erase(fd);
        return;
      }
    }
  }

  static std::string render(const Reply& r) {
    std::string s = "HTTP/1.1 " + std::to_string(r.status) + " X\r\nServer: fake\r\n";
    switch (r.framing) {
      case Framing::length:
        s += "Content-Length: " + std::to_string(r.body.size()) + "\r\n\r\n" + r.body;
        break;
      case Framing::chunked: {
        s += "Transfer-Encoding: chunked\r\n\r\n";
        size_t half = r.body.size() / 2;
        char hex[32];
        for (auto piece : {r.body.substr(0, half), r.body.substr(half)}) {
          if (piece.empty()) continue;
          std::snprintf(hex, sizeof hex, "%zx\r\n", piece.size());
          s += hex + piece + "\r\n";
        }
        s += "0\r\n\r\n";
        break;
      }
      case Framing::close:
        s += "Connection: close\r\n\r\n" + r.body;
        break;
    }
    return s;
  }

  static void send_all(int fd, const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }

  bool hang_;
  int lfd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  uint16_t port_ = 0;
  std::mutex mu_;
  std::map<std::string, Reply> routes_;
  std::string last_head_;
  std::atomic<bool> close_after_each_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> requests_{0};
  std::thread thread_;
};

// A loopback port nobody listens on (bound, then closed).
uint16_t refused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
  socklen_t len = sizeof sin;
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
  ::close(fd);
  return ntohs(sin.sin_port);
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sin;
}

tr::BackendConfig backend(const std::string& name, uint16_t port) {
  tr::BackendConfig b;
  b.name = name;
  b.host = "127.0.0.1";
  b.port = port;
  b.url = "http://127.0.0.1:" + std::to_string(port);
  sockaddr_in sin = loopback(port);
  std::memcpy(&b.addr.storage, &sin, sizeof sin);
  b.addr.len = sizeof sin;
  b.addr.text = "127.0.0.1:" + std::to_string(port);
  return b;
}

tr::poller::Target target(uint16_t port) {
  tr::poller::Target t;
  sockaddr_in sin = loopback(port);
  std::memcpy(&t.addr, &sin, sizeof sin);
  t.addr_len = sizeof sin;
  t.host_header = "127.0.0.1:" + std::to_string(port);
  return t;
}

struct Result {
  uint32_t target = 0;
  uint32_t channel = 0;
  int32_t status = 0;
  tr::poller::Stage stage = tr::poller::Stage::none;
  std::string body;
  int64_t at_ms = 0;
};

struct Recorder final : tr::poller::HttpHandler {
  void on_response(uint32_t t, uint32_t ch, const tr::poller::Response& r) override {
    results.push_back(Result{t, ch, r.status, r.stage, std::string(r.body), tr::mono_ms()});
  }
  const Result* find(uint32_t t, uint32_t ch) const {
    for (const Result& r : results) {
      if (r.target == t && r.channel == ch) return &r;
    }
    return nullptr;
  }
  std::vector<Result> results;
};

void run_until_idle(tr::poller::HttpClient& c) {
  while (c.in_flight() > 0)
    c.run(INT64_MAX);
}

bool wait_for(const std::function<bool()>& pred, int timeout_ms = 5000) {
  int64_t until = tr::mono_ms() + timeout_ms;
  while (tr::mono_ms() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

const char* const kModelsA =
    R"({"object":"list","data":[{"id":"m1","object":"model","owned_by":"vllm"},)"
    R"( {"id":"shared","object":"model","root":"a"} ]})";
const char* const kModelsB =
    R"({"object":"list","data":[{"id":"shared","root":"b"},{"id":"m2","max_model_len":4096}]})";
const char* const kModels503 = R"({"object":"list","data":[{"id":"sick"}]})";

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("models: parse keeps entry text, order, and skips unusable entries", "[poller]") {
  std::vector<ModelEntry> out;
  tr::poller::ModelsParseResult res;
  std::string why;
  REQUIRE(tr::poller::parse_models(
      R"({"object":"list","data":[ {"id":"a", "x":[1,{"y":2}]} , 7, {"noid":1}, [1,[2]],)"
      R"( {"id":"b"}, {"id":"a","dup":true}, {"id":5} ]})",
      &out, &res, &why));
  REQUIRE(out.size() == 2);
  CHECK(out[0].id == "a");
  CHECK(out[0].json == R"({"id":"a", "x":[1,{"y":2}]})");
  CHECK(out[1].id == "b");
  CHECK(out[1].json == R"({"id":"b"})");
  CHECK(res.skipped == 5);

  // "data" before or after other keys; id not the first field.
  REQUIRE(tr::poller::parse_models(R"({"data":[{"object":"model","id":"z"}],"object":"list"})",
                                   &out, &res, &why));
  REQUIRE(out.size() == 1);
  CHECK(out[0].id == "z");
  CHECK(out[0].json == R"({"object":"model","id":"z"})");
}

TEST_CASE("models: malformed bodies are rejected and leave the list alone", "[poller]") {
  std::vector<ModelEntry> out{{"keep", "{\"id\":\"keep\"}"}};
  tr::poller::ModelsParseResult res;
  std::string why;
  for (const char* body : {"", "not json", "[]", R"({"object":"list"})", R"({"data":{}})",
                           R"({"data":[{"id":"a"},)", R"({"data":[{"id":"a"}])"}) {
    INFO(body);
    why.clear();
    CHECK_FALSE(tr::poller::parse_models(body, &out, &res, &why));
    CHECK_FALSE(why.empty());
    REQUIRE(out.size() == 1);
    CHECK(out[0].id == "keep");
  }
}

TEST_CASE("models: merge dedups by id, first list wins, skips null lists", "[poller]") {
  std::vector<ModelEntry> a{{"m1", R"({"id":"m1"})"}, {"shared", R"({"id":"shared","r":"a"})"}};
  std::vector<ModelEntry> down{{"gone", R"({"id":"gone"})"}};
  std::vector<ModelEntry> b{{"shared", R"({"id":"shared","r":"b"})"}, {"m2", R"({"id":"m2"})"}};
  std::string out;
  tr::poller::merge_models({&a, nullptr, &b}, &out);
  CHECK(out == R"({"object":"list","data":[{"id":"m1"},{"id":"shared","r":"a"},{"id":"m2"}]})");
  tr::poller::merge_models({}, &out);
  CHECK(out == R"({"object":"list","data":[]})");
  (void)down;
}

TEST_CASE("http client: content-length, chunked and close-delimited responses", "[poller]") {
  FakeServer srv;
  std::string big(200 * 1024, 'x');  // several recv(2) calls and chunks
  srv.route("/len", {200, "hello", FakeServer::Framing::length});
  srv.route("/chunked", {200, big, FakeServer::Framing::chunked});
  srv.route("/close", {503, "bye", FakeServer::Framing::close});
  srv.route("/empty", {200, "", FakeServer::Framing::chunked});
  Recorder rec;
  tr::poller::HttpClient client({target(srv.port())}, 4, &rec);
  int64_t deadline = tr::mono_ms() + 5000;
  REQUIRE(client.get(0, 0, "/len", deadline));
  REQUIRE(client.get(0, 1, "/chunked", deadline));
  REQUIRE(client.get(0, 2, "/close", deadline));
  REQUIRE(client.get(0, 3, "/empty", deadline));
  CHECK_FALSE(client.get(0, 0, "/len", deadline));  // channel busy
  CHECK(client.in_flight() == 4);
  run_until_idle(client);
  REQUIRE(rec.results.size() == 4);
  CHECK(rec.find(0, 0)->status == 200);
  CHECK(rec.find(0, 0)->body == "hello");
  CHECK(rec.find(0, 1)->status == 200);
  CHECK(rec.find(0, 1)->body == big);
  CHECK(rec.find(0, 2)->status == 503);
  CHECK(rec.find(0, 2)->stage == tr::poller::Stage::none);
  CHECK(rec.find(0, 2)->body == "bye");
  CHECK(rec.find(0, 3)->status == 200);
  CHECK(rec.find(0, 3)->body.empty());
  CHECK(client.stats().failures == 0);
}

TEST_CASE("http client: keep-alive reuses one connection per channel", "[poller]") {
  FakeServer srv;
  srv.route("/health", {200, "", FakeServer::Framing::length});
  srv.route("/c", {200, "abc", FakeServer::Framing::chunked});
  Recorder rec;
  tr::poller::HttpClient client({target(srv.port())}, 1, &rec);
  for (int i = 0; i < 5; ++i) {
    REQUIRE(client.get(0, 0, i % 2 ? "/c" : "/health", tr::mono_ms() + 5000));
    run_until_idle(client);
  }
  REQUIRE(rec.results.size() == 5);
  for (const Result& r : rec.results)
    CHECK(r.status == 200);
  CHECK(rec.results[1].body == "abc");
  CHECK(srv.accepted() == 1);
  CHECK(srv.requests() == 5);
  CHECK(client.stats().connects == 1);
  CHECK(client.stats().reuses == 4);
}

TEST_CASE("http client: a connection the server closed is replaced", "[poller]") {
  FakeServer srv;
  srv.route("/health", {200, "ok", FakeServer::Framing::length});
  srv.close_after_each(true);
  Recorder rec;
  tr::poller::HttpClient client({target(srv.port())}, 1, &rec);
  REQUIRE(client.get(0, 0, "/health", tr::mono_ms() + 5000));
  run_until_idle(client);
  // The server's FIN is in by now, but the client has not looked: the next
  // request goes out on the dead connection and must be retried once.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(client.get(0, 0, "/health", tr::mono_ms() + 5000));
  run_until_idle(client);
  REQUIRE(rec.results.size() == 2);
  CHECK(rec.results[1].status == 200);
  CHECK(rec.results[1].body == "ok");
  CHECK(client.stats().retries == 1);
  CHECK(srv.accepted() == 2);
}

TEST_CASE("http client: responses over the bound fail with EMSGSIZE", "[poller]") {
  FakeServer srv;
  srv.route("/big", {200, std::string(5000, 'y'), FakeServer::Framing::length});
  srv.route("/bigc", {200, std::string(5000, 'y'), FakeServer::Framing::chunked});
  srv.route("/ok", {200, std::string(1000, 'y'), FakeServer::Framing::chunked});
  Recorder rec;
  tr::poller::ClientLimits limits;
  limits.body_bytes_max = 1000;
  tr::poller::HttpClient client({target(srv.port())}, 3, &rec, limits);
  int64_t deadline = tr::mono_ms() + 5000;
  REQUIRE(client.get(0, 0, "/big", deadline));
  REQUIRE(client.get(0, 1, "/bigc", deadline));
  REQUIRE(client.get(0, 2, "/ok", deadline));
  run_until_idle(client);
  CHECK(rec.find(0, 0)->status == -EMSGSIZE);
  CHECK(rec.find(0, 1)->status == -EMSGSIZE);
  CHECK(rec.find(0, 2)->status == 200);
  CHECK(rec.find(0, 2)->body.size() == 1000);
}

TEST_CASE("http client: a hung or refused replica does not delay the others", "[poller]") {
  FakeServer good;
  FakeServer hung(/*hang=*/true);
  good.route("/health", {200, "", FakeServer::Framing::length});
  uint16_t refused = refused_port();
  Recorder rec;
  tr::poller::HttpClient client({target(hung.port()), target(good.port()), target(refused)}, 1,
                                &rec);
  const int64_t timeout_ms = 400;
  int64_t t0 = tr::mono_ms();
  for (uint32_t i = 0; i < 3; ++i)
    REQUIRE(client.get(i, 0, "/health", t0 + timeout_ms));
  run_until_idle(client);
  int64_t elapsed = tr::mono_ms() - t0;
  REQUIRE(rec.results.size() == 3);
  const Result* h = rec.find(0, 0);
  const Result* g = rec.find(1, 0);
  const Result* r = rec.find(2, 0);
  CHECK(h->status == -ETIMEDOUT);
  CHECK(h->stage == tr::poller::Stage::recv);
  CHECK(g->status == 200);
  CHECK(r->status == -ECONNREFUSED);
  CHECK(r->stage == tr::poller::Stage::connect);
  // Ordering, not wall-clock thresholds: the good one finished before the hung one.
  CHECK(g->at_ms <= h->at_ms);
  CHECK(h->at_ms >= t0 + timeout_ms);
  CHECK(elapsed < 5 * timeout_ms);
  CHECK(client.stats().timeouts == 1);
}

TEST_CASE("poller: poll_once marks replicas up and down and merges models", "[poller]") {
  FakeServer a;
  FakeServer sick;
  FakeServer hung(/*hang=*/true);
  FakeServer b;
  uint16_t refused = refused_port();
  a.route("/health", {200, "", FakeServer::Framing::length});
  a.route("/v1/models", {200, kModelsA, FakeServer::Framing::length});
  sick.route("/health", {503, "loading", FakeServer::Framing::length});
  sick.route("/v1/models", {200, kModels503, FakeServer::Framing::length});
  b.route("/health", {200, "", FakeServer::Framing::chunked});
  b.route("/v1/models", {200, kModelsB, FakeServer::Framing::chunked});

  tr::Config cfg;
  cfg.poller.timeout_ms = 300;
  cfg.poller.health_interval_ms = 50;
  cfg.backends = {backend("gpu0", a.port()), backend("sick", sick.port()),
                  backend("hung", hung.port()), backend("refused", refused),
                  backend("gpu1", b.port())};
  tr::scores::Table table(cfg.backends.size());
  tr::poller::Poller poller(cfg, &table);

  CHECK(*poller.models_json() == R"({"object":"list","data":[]})");
  REQUIRE(poller.models_by_replica()->size() == 5);

  int64_t t0 = tr::mono_ms();
  poller.poll_once();
  int64_t elapsed = tr::mono_ms() - t0;
  CHECK(elapsed < 5 * 300);

  CHECK(table.at(0).up.load());
  CHECK_FALSE(table.at(1).up.load());
  CHECK_FALSE(table.at(2).up.load());
  CHECK_FALSE(table.at(3).up.load());
  CHECK(table.at(4).up.load());
  CHECK(table.at(0).last_health_status.load() == 200);
  CHECK(table.at(1).last_health_status.load() == 503);
  CHECK(table.at(2).last_health_status.load() == -ETIMEDOUT);
  CHECK(table.at(3).last_health_status.load() == -ECONNREFUSED);
  CHECK(table.at(4).last_health_status.load() == 200);
  for (size_t i = 0; i < 5; ++i)
    CHECK(table.at(i).last_health_ms.load() >= t0);

  // Union in config order, first replica wins "shared", the 503 one is left out.
  CHECK(*poller.models_json() ==
        R"({"object":"list","data":[{"id":"m1","object":"model","owned_by":"vllm"},)"
        R"({"id":"shared","object":"model","root":"a"},{"id":"m2","max_model_len":4096}]})");
  auto by = poller.models_by_replica();
  REQUIRE(by->size() == 5);
  CHECK((*by)[0] == std::vector<std::string>{"m1", "shared"});
  CHECK((*by)[1] == std::vector<std::string>{"sick"});  // known, though down
  CHECK((*by)[2].empty());
  CHECK((*by)[3].empty());
  CHECK((*by)[4] == std::vector<std::string>{"shared", "m2"});
}

TEST_CASE("poller: probes live under base_path and name the replica in Host", "[poller]") {
  FakeServer srv;
  srv.route("/vllm/a/health", {200, "", FakeServer::Framing::length});
  srv.route("/vllm/a/v1/models", {200, kModelsB, FakeServer::Framing::length});
  tr::Config cfg;
  cfg.poller.timeout_ms = 1000;
  cfg.backends = {backend("gpu0", srv.port())};
  cfg.backends[0].base_path = "/vllm/a";
  cfg.backends[0].host = "gpu0.local";
  tr::scores::Table table(1);
  tr::poller::Poller poller(cfg, &table);
  poller.poll_once();
  CHECK(table.at(0).up.load());
  CHECK((*poller.models_by_replica())[0] == std::vector<std::string>{"shared", "m2"});
  std::string head = srv.last_head();
  CHECK(head.find("\r\nHost: gpu0.local:" + std::to_string(srv.port()) + "\r\n") !=
        std::string::npos);
}

TEST_CASE("poller: the thread follows a replica going up and down", "[poller]") {
  FakeServer srv;
  FakeServer hung(/*hang=*/true);
  srv.route("/health", {503, "", FakeServer::Framing::length});
  srv.route("/v1/models", {200, kModelsB, FakeServer::Framing::length});

  tr::Config cfg;
  cfg.poller.timeout_ms = 200;
  cfg.poller.health_interval_ms = 20;
  cfg.backends = {backend("hung", hung.port()), backend("gpu0", srv.port())};
  tr::scores::Table table(cfg.backends.size());
  tr::poller::Poller poller(cfg, &table);
  poller.poll_once();
  CHECK_FALSE(table.at(0).up.load());
  CHECK_FALSE(table.at(1).up.load());
  CHECK(*poller.models_json() == R"({"object":"list","data":[]})");

  poller.start();
  srv.route("/v1/models", {200, kModelsA, FakeServer::Framing::chunked});
  srv.route("/health", {200, "", FakeServer::Framing::length});
  // Coming up refreshes the model list at once (not at the next 5 s round).
  REQUIRE(wait_for(
      [&] {
        return table.at(1).up.load() &&
               poller.models_json()->find("\"owned_by\":\"vllm\"") != std::string::npos;
      },
      2500));
  CHECK((*poller.models_by_replica())[1] == std::vector<std::string>{"m1", "shared"});

  srv.route("/health", {500, "", FakeServer::Framing::close});
  REQUIRE(wait_for([&] { return !table.at(1).up.load(); }));
  CHECK(table.at(1).last_health_status.load() == 500);
  REQUIRE(wait_for([&] { return *poller.models_json() == R"({"object":"list","data":[]})"; }));
  CHECK_FALSE(table.at(0).up.load());  // the hung replica stayed down throughout

  poller.stop();
  poller.stop();  // idempotent
  int64_t last = table.at(1).last_health_ms.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(table.at(1).last_health_ms.load() == last);  // really stopped
}

TEST_CASE("poller: destructor stops a running thread promptly", "[poller]") {
  FakeServer hung(/*hang=*/true);
  tr::Config cfg;
  cfg.poller.timeout_ms = 60000;  // the wakeup, not a deadline, must end the wait
  cfg.poller.health_interval_ms = 60000;
  cfg.backends = {backend("hung", hung.port())};
  tr::scores::Table table(1);
  int64_t t0;
  {
    tr::poller::Poller poller(cfg, &table);
    poller.start();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    t0 = tr::mono_ms();
  }
  CHECK(tr::mono_ms() - t0 < 5000);
}
