"""The official OpenAI client (the `openai` npm package, pinned in
openai-node/package-lock.json) through the real proxy: streaming chat and
legacy completions, a non-streaming chat, models.list() and a 404 must look
to the client exactly as they do straight against a simulator. Runs under
$TOKENRELAY_IO.

Needs node and, unless openai-node/node_modules is already there, npm and the
npm registry (`npm ci`). Without them the test exits 77 (meson: skipped)."""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "openai-node")
SCRIPT = os.path.join(NODE_DIR, "client_test.mjs")
MIN_NODE_MAJOR = 20
MAX_TOKENS = 20
MODEL = "sim-model"
REQUEST_ID_PREFIX = "openai-client-test"


def skip(reason):
    print("SKIP: %s" % reason, flush=True)
    sys.exit(77)


def _locked_version():
    with open(os.path.join(NODE_DIR, "package-lock.json")) as f:
        return json.load(f)["packages"]["node_modules/openai"]["version"]


def _installed_version():
    try:
        with open(os.path.join(NODE_DIR, "node_modules", "openai", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None


def _npm_ci():
    """Runs `npm ci` unless the locked openai version is installed. The two
    backend variants of this test may start together: a lock (outside the
    source tree) keeps them from installing over each other."""
    import fcntl
    import hashlib
    import tempfile
    want = _locked_version()
    if _installed_version() == want:
        return
    npm = shutil.which("npm")
    if not npm:
        skip("openai-node/node_modules is missing and npm is not installed")
    lock_path = os.path.join(tempfile.gettempdir(), "tokenrelay-openai-node-%s.lock"
                             % hashlib.sha1(NODE_DIR.encode()).hexdigest()[:12])
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version() == want:
            return
        print("running npm ci in %s (openai %s)" % (NODE_DIR, want), flush=True)
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                               capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.SubprocessError) as e:
            skip("npm ci failed: %r" % e)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
            skip("npm ci failed (exit %d): %s" % (r.returncode, " | ".join(tail)))
    got = _installed_version()
    if got != want:
        skip("npm ci succeeded but node_modules/openai is %s, not %s" % (got, want))


def ensure_node_client():
    """Returns the path of node with the locked openai package installed, or exits 77."""
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        skip("node is not installed")
    try:
        ver = subprocess.run([node, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        major = int(ver.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        skip("cannot run %s --version: %r" % (node, e))
    if major < MIN_NODE_MAJOR:
        skip("node %s is older than v%d" % (ver, MIN_NODE_MAJOR))
    _npm_ci()
    return node


NODE = ensure_node_client()

# Imported after the skip checks: proxytools may itself exit 77 (no io_uring).
from proxytools import start_proxy, run_checks  # noqa: E402
from simtools import start_sim, stream_chat  # noqa: E402

CREATED = "1700000000"
sims = [start_sim("--speed", "100", "--created", CREATED) for _ in range(2)]
px = start_proxy(sims)

runs = {}


def run_client(port):
    """Runs client_test.mjs against http://127.0.0.1:<port>/v1; returns its summary."""
    url = "http://127.0.0.1:%d/v1" % port
    r = subprocess.run([NODE, SCRIPT, url, "--request-id", REQUEST_ID_PREFIX, "--model", MODEL,
                        "--max-tokens", str(MAX_TOKENS)],
                       cwd=NODE_DIR, capture_output=True, text=True, timeout=120)
    try:
        summary = json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError("client_test.mjs against %s printed no summary (exit %d):\n%s%s"
                             % (url, r.returncode, r.stdout, r.stderr))
    assert r.returncode == 0 and summary["ok"], \
        "client_test.mjs against %s failed (exit %d):\n%s" % (url, r.returncode, r.stderr)
    return summary


def direct():
    return runs["direct"]


def proxied():
    return runs["proxy"]


def check_direct_baseline():
    # Both simulators answer identically for the same request ids, so whichever
    # replica the proxy picks, the comparison with sims[0] is meaningful.
    runs["direct"] = run_client(sims[0].port)
    other = run_client(sims[1].port)
    for key in ("chat_stream", "completion_stream"):
        assert other[key]["chunks"] == direct()[key]["chunks"], key
    assert other["chat"]["completion"] == direct()["chat"]["completion"]
    print("     openai %s on node %s" % (direct()["openai_version"], direct()["node_version"]),
          flush=True)


def check_client_through_proxy():
    runs["proxy"] = run_client(px.port)


def compare_stream(key):
    d, p = direct()[key], proxied()[key]
    assert p["response"]["status"] == 200, p["response"]
    assert p["response"]["content_type"] == d["response"]["content_type"], \
        (p["response"], d["response"])
    assert p["n_chunks"] == d["n_chunks"], (p["n_chunks"], d["n_chunks"])
    assert p["text"] == d["text"], (p["text"], d["text"])
    assert p["usage"] == d["usage"], (p["usage"], d["usage"])
    assert p["usage"]["completion_tokens"] == MAX_TOKENS, p["usage"]
    assert p["finish_reasons"] == d["finish_reasons"] == ["length"], \
        (p["finish_reasons"], d["finish_reasons"])
    assert p["id"] == d["id"], (p["id"], d["id"])
    # Every chunk the client parsed is identical, field for field.
    for i, (pc, dc) in enumerate(zip(p["chunks"], d["chunks"])):
        assert pc == dc, "chunk %d differs:\nproxy  %s\ndirect %s" % (i, pc, dc)
    # The proxy echoes the caller's X-Request-Id.
    assert p["response"]["x_request_id"] == "%s-%s" % (REQUEST_ID_PREFIX, key.replace("_", "-")), \
        p["response"]


def check_chat_stream_same():
    compare_stream("chat_stream")


def check_completion_stream_same():
    compare_stream("completion_stream")


def check_chat_non_streaming_same():
    d, p = direct()["chat"], proxied()["chat"]
    assert p["response"]["status"] == 200, p["response"]
    assert p["completion"] == d["completion"], (p["completion"], d["completion"])
    assert p["request_id"] == "%s-chat" % REQUEST_ID_PREFIX, p["request_id"]


def check_models_list():
    p, d = proxied()["models"], direct()["models"]
    assert MODEL in p["ids"], p["ids"]
    assert p["ids"] == d["ids"], (p["ids"], d["ids"])


def check_not_found_error():
    for key in ("error_not_found", "error_not_found_stream"):
        p, d = proxied()[key], direct()[key]
        assert p["is_api_error"] and p["is_not_found"] and p["status"] == 404, p
        assert p["class"] == "NotFoundError", p
        # The proxy answers for the pool it knows: vLLM's sentence, then the models served.
        assert d["message"] == "404 The model `%s` does not exist." % d["model"], d["message"]
        assert p["message"] == d["message"] + " Available models: sim-model.", p["message"]


def check_raw_stream_still_exact():
    # After the client's keep-alive traffic, a plain stream is still byte-exact.
    hdr = {"X-Request-Id": "%s-raw-after" % REQUEST_ID_PREFIX}
    via = stream_chat(px.port, max_tokens=8, headers=hdr)
    ref = stream_chat(sims[0].port, max_tokens=8, headers=hdr)
    assert via.status == 200 and via.complete, via.wire[-200:]
    assert via.chunks == ref.chunks


def check_proxy_exits_cleanly():
    code = px.stop()
    log = px.log()
    assert code == 0, "tokenrelay exited with %s\n%s" % (code, log)
    bad = [ln for ln in log.splitlines() if "[error]" in ln or "[warn" in ln]
    assert not bad, "\n".join(bad)


run_checks([
    ("client straight against both simulators", check_direct_baseline),
    ("client through the proxy", check_client_through_proxy),
    ("streaming chat: same chunks, text, usage", check_chat_stream_same),
    ("streaming completion: same chunks, text, usage", check_completion_stream_same),
    ("non-streaming chat: same object", check_chat_non_streaming_same),
    ("models.list() returns the sim's model", check_models_list),
    ("unknown model: APIError 404 (plain and stream)", check_not_found_error),
    ("raw stream still byte-exact afterwards", check_raw_stream_still_exact),
    ("proxy exits 0, no errors logged", check_proxy_exits_cleanly),
])
