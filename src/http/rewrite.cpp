#include "http/rewrite.hpp"

#include <cstdio>

#include "core/json.hpp"

namespace tr::http {

namespace {

// Headers a proxy never forwards, in either direction.
bool is_hop_by_hop(std::string_view name) {
  static constexpr std::string_view kHop[] = {
      "connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
  };
  for (std::string_view h : kHop) {
    if (ieq(name, h)) return true;
  }
  return false;
}

// Headers named in Connection are hop-by-hop too.
bool named_by_connection(const MessageParser& m, std::string_view name) {
  for (size_t i = 0; i < m.header_count(); ++i) {
    Header h = m.header(i);
    if (ieq(h.name, "connection") && token_list_has(h.value, name)) return true;
  }
  return false;
}

void append_header(std::string* out, std::string_view name, std::string_view value) {
  out->append(name);
  out->append(": ");
  out->append(value);
  out->append("\r\n");
}

void append_u64(std::string* out, uint64_t v) {
  char buf[24];
  int n = std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(v));
  out->append(buf, static_cast<size_t>(n));
}

}  // namespace

void build_upstream_request(const MessageParser& req, const UpstreamRequestParams& p,
                            std::string* out) {
  out->append(req.method());
  out->push_back(' ');
  out->append(p.base_path);
  out->append(req.target());
  out->append(" HTTP/1.1\r\n");
  bool have_host = false;
  std::string_view xff;
  bool have_xff = false;
  for (size_t i = 0; i < req.header_count(); ++i) {
    Header h = req.header(i);
    if (is_hop_by_hop(h.name) || ieq(h.name, "trailer") || ieq(h.name, "content-length") ||
        ieq(h.name, "expect") || ieq(h.name, "x-request-id")) {
      continue;
    }
    if (ieq(h.name, "x-forwarded-for")) {
      xff = h.value;  // only one is kept: the list is rebuilt below
      have_xff = true;
      continue;
    }
    if (named_by_connection(req, h.name)) continue;
    if (ieq(h.name, "host")) have_host = true;
    if (ieq(h.name, "authorization") && (p.strip_authorization || !p.api_key.empty())) continue;
    append_header(out, h.name, h.value);
  }
  if (!have_host) append_header(out, "Host", p.host);
  out->append("X-Forwarded-For: ");
  if (have_xff && !xff.empty()) {
    out->append(xff);
    out->append(", ");
  }
  out->append(p.client_ip);
  out->append("\r\n");
  append_header(out, "X-Request-Id", p.request_id);
  if (!p.api_key.empty()) {
    out->append("Authorization: Bearer ");
    out->append(p.api_key);
    out->append("\r\n");
  }
  if (p.has_body || p.body_bytes > 0) {
    out->append("Content-Length: ");
    append_u64(out, p.body_bytes);
    out->append("\r\n");
  }
  out->append("\r\n");
}

void build_client_response(const MessageParser& resp, const ClientResponseParams& p,
                           std::string* out) {
  char line[64];
  int n = std::snprintf(line, sizeof line, "HTTP/1.%d %d ", p.client_http10 ? 0 : 1,
                        resp.status_code());
  out->append(line, static_cast<size_t>(n));
  out->append(resp.reason().empty() ? std::string_view(reason_phrase(resp.status_code()))
                                    : resp.reason());
  out->append("\r\n");
  bool have_id = false;
  for (size_t i = 0; i < resp.header_count(); ++i) {
    Header h = resp.header(i);
    if (ieq(h.name, "transfer-encoding")) {
      // Chunked framing is relayed byte for byte, so the header stays with it.
      if (!p.dechunk) append_header(out, h.name, h.value);
      continue;
    }
    if (is_hop_by_hop(h.name) || named_by_connection(resp, h.name)) continue;
    if (ieq(h.name, "x-request-id")) have_id = true;
    append_header(out, h.name, h.value);
  }
  if (!have_id && !p.request_id.empty()) append_header(out, "x-request-id", p.request_id);
  if (!p.keep_alive) {
    out->append("Connection: close\r\n");
  } else if (p.client_http10) {
    out->append("Connection: keep-alive\r\n");
  }
  out->append("\r\n");
}

namespace {
void append_error_json(const ErrorReply& e, std::string* out) {
  out->append("{\"error\":{\"message\":\"");
  json_escape_append(*out, e.message);
  out->append("\",\"type\":\"");
  json_escape_append(*out, e.type);
  if (e.param.empty()) {
    out->append("\",\"param\":null,\"code\":\"");
  } else {
    out->append("\",\"param\":\"");
    json_escape_append(*out, e.param);
    out->append("\",\"code\":\"");
  }
  json_escape_append(*out, e.code);
  out->append("\"}}");
}
}  // namespace

void build_error_response(const ErrorReply& e, std::string_view request_id, bool keep_alive,
                          std::string* out, int retry_after_s) {
  std::string body;
  append_error_json(e, &body);
  body.push_back('\n');
  char line[160];
  int n = std::snprintf(line, sizeof line,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %zu\r\n",
                        e.status, reason_phrase(e.status), body.size());
  out->append(line, static_cast<size_t>(n));
  if (!request_id.empty()) append_header(out, "x-request-id", request_id);
  if (retry_after_s >= 0) append_header(out, "Retry-After", std::to_string(retry_after_s));
  if (!keep_alive) out->append("Connection: close\r\n");
  out->append("\r\n");
  out->append(body);
}

void build_error_event(const ErrorReply& e, std::string* out) {
  out->append("data: ");
  append_error_json(e, out);
  out->append("\n\n");
}

void build_json_response(int status, std::string_view body, bool keep_alive, std::string* out) {
  char line[160];
  int n = std::snprintf(line, sizeof line,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %zu\r\n%s\r\n",
                        status, reason_phrase(status), body.size(),
                        keep_alive ? "" : "Connection: close\r\n");
  out->append(line, static_cast<size_t>(n));
  out->append(body);
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 417:
      return "Expectation Failed";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

}  // namespace tr::http
