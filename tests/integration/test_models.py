"""Model-aware pools through the real proxy: requests go only to replicas that
serve their model; [model NAME] aliases split by weight and rewrite the body's
"model"; unknown and missing models get OpenAI-style errors; `models =`
overrides discovery; per-model metrics and /status. Runs under $TOKENRELAY_IO."""

import json
import threading

from fakeupstream import FakeUpstream
from proxytools import make_config, run_checks, start_proxy
from simtools import http_json, http_request, metric_value, sim_stats, start_sim, stream_chat


def received(sims):
    return [sim_stats(s.port)["requests_received"] for s in sims]


def completion(port, model, stream=False, max_tokens=2, extra=None):
    body = {"model": model, "prompt": "hello there", "max_tokens": max_tokens, "stream": stream}
    if extra:
        body.update(extra)
    return http_request(port, "POST", "/v1/completions", body=json.dumps(body),
                        headers={"Content-Type": "application/json"})


def status(px):
    code, _, body = http_request(px.admin_port, "GET", "/status")
    assert code == 200
    return json.loads(body)


def check_two_model_fleet_routes_by_model():
    alpha = [start_sim("--model", "alpha", "--speed", "50") for _ in range(2)]
    beta = [start_sim("--model", "beta", "--speed", "50")]
    with start_proxy(alpha + beta, workers=2) as px:
        sent = {"alpha": 0, "beta": 0}
        errors = []
        lock = threading.Lock()

        def client(k):
            for j in range(15):
                model = "alpha" if (k + j) % 3 else "beta"
                if j % 2:
                    r = stream_chat(px.port, model=model, max_tokens=3)
                    ok = r.complete
                else:
                    code, _, body = completion(px.port, model)
                    ok = code == 200 and json.loads(body)["model"] == model
                with lock:
                    sent[model] += 1
                    if not ok:
                        errors.append(model)

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        got = received(alpha + beta)
        assert got[0] + got[1] == sent["alpha"], (got, sent)
        assert got[2] == sent["beta"], (got, sent)
        assert got[0] > 0 and got[1] > 0, got  # the alpha pool is still balanced
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_model_requests_total", model="alpha",
                            code="200") == sent["alpha"]
        assert metric_value(fam, "tokenrelay_model_requests_total", model="beta",
                            code="200") == sent["beta"]
        assert metric_value(fam, "tokenrelay_model_inflight_requests", model="alpha") == 0
        assert metric_value(fam, "tokenrelay_model_backends", model="alpha", state="up") == 2
        st = status(px)
        pools = {m["id"]: m["replicas"] for m in st["models"]}
        assert pools == {"alpha": ["r0", "r1"], "beta": ["r2"]}, pools


def check_unknown_and_missing_model():
    a = start_sim("--model", "alpha", "--speed", "50")
    b = start_sim("--model", "beta", "--speed", "50")
    with start_proxy([a, b]) as px:
        code, _, body = completion(px.port, "gamma")
        assert code == 404, (code, body)
        err = json.loads(body)["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model", err
        assert "gamma" in err["message"] and "alpha" in err["message"] and "beta" in err["message"]
        code, _, body = http_request(px.port, "POST", "/v1/completions",
                                     body=json.dumps({"prompt": "hi", "max_tokens": 2}))
        assert code == 400, (code, body)
        assert json.loads(body)["error"]["code"] == "model_required"
        assert received([a, b]) == [0, 0]
        # Still served after the errors, on the same keep-alive-less path.
        assert completion(px.port, "beta")[0] == 200
        fam = px.metrics()
        assert metric_value(fam, "tokenrelay_model_requests_total", model="other", code="404") == 1
    # One model served: a request without "model" goes to its pool.
    with start_proxy([a]) as px:
        code, _, body = http_request(px.port, "POST", "/v1/completions",
                                     body=json.dumps({"prompt": "hi", "max_tokens": 2}))
        assert code == 200, (code, body)


def check_alias_split_and_rewrite():
    main = start_sim("--model", "llama", "--speed", "200")
    rc = start_sim("--model", "llama-rc", "--speed", "200")
    extra = "[model chat]\ntargets = llama:80, llama-rc:20\n"
    with start_proxy([main, rc], extra=extra) as px:
        counts = {"llama": 0, "llama-rc": 0}
        lock = threading.Lock()

        def client(k):
            for _ in range(250):
                code, _, body = completion(px.port, "chat", max_tokens=1)
                assert code == 200, (code, body)
                with lock:
                    counts[json.loads(body)["model"]] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = sum(counts.values())
        assert total == 1000, counts
        share = counts["llama-rc"] / total
        assert 0.15 <= share <= 0.25, counts
        assert received([main, rc]) == [counts["llama"], counts["llama-rc"]]
        code, _, body = http_request(px.port, "GET", "/v1/models")
        ids = [m["id"] for m in json.loads(body)["data"]]
        assert ids == ["llama", "llama-rc", "chat"], ids
        st = status(px)
        assert st["aliases"] == [{"name": "chat", "targets": [
            {"model": "llama", "weight": 80, "served": True},
            {"model": "llama-rc", "weight": 20, "served": True}]}], st["aliases"]
        assert metric_value(px.metrics(), "tokenrelay_model_requests_total", model="chat",
                            code="200") == 1000
    # A target with no usable replica: its share goes to the other target.
    rc.stop()
    with start_proxy([main, rc], extra=extra) as px:
        for _ in range(20):
            code, _, body = completion(px.port, "chat", max_tokens=1)
            assert code == 200 and json.loads(body)["model"] == "llama", (code, body)


def check_rewrite_keeps_the_rest_of_the_body():
    fake = FakeUpstream("ok")
    try:
        text = make_config([("f", fake.url)]) + (
            "models = base-rc\n\n[model base]\ntargets = base-rc\n")
        with start_proxy(config_text=text) as px:
            raw = ('{ "prompt" : "caf\\u00e9 \\"q\\"",  "model" :  "base" , "max_tokens": 3,'
                   '"x":[1, 2] }')
            code, _, _ = http_request(px.port, "POST", "/v1/completions", body=raw,
                                      headers={"Content-Type": "application/json"})
            assert code == 200
            sent = fake.bodies[-1].decode()
            assert sent == raw.replace('"base"', '"base-rc"'), sent
            # X-Priority is not inserted for an fcfs replica; the body stays as sent.
            code, _, _ = http_request(px.port, "POST", "/v1/completions", body=raw,
                                      headers={"X-Priority": "-3"})
            assert fake.bodies[-1].decode() == raw.replace('"base"', '"base-rc"')
            # A nonzero body priority is removed for it (vLLM would answer 400),
            # wherever the member is; 0 is harmless and stays.
            for sent_raw, want in [
                ('{"priority": 3, "model":"base","prompt":"p"}', '{ "model":"base-rc","prompt":"p"}'),
                ('{"model":"base", "priority":-2 }', '{"model":"base-rc" }'),
                ('{"model":"base","priority":1,"prompt":"p"}', '{"model":"base-rc","prompt":"p"}'),
                ('{"model":"base","priority":0}', '{"model":"base-rc","priority":0}'),
            ]:
                code, _, _ = http_request(px.port, "POST", "/v1/completions", body=sent_raw)
                assert code == 200
                assert fake.bodies[-1].decode() == want, (sent_raw, fake.bodies[-1], want)
    finally:
        fake.stop()


def check_priority_header_reaches_priority_replicas():
    fake = FakeUpstream("ok")
    try:
        text = make_config([("f", fake.url)]) + "models = m\nscheduling = priority\n"
        with start_proxy(config_text=text) as px:
            for raw, header, want in [
                ('{"model":"m","prompt":"p"}', "high", '{"priority":-1,"model":"m","prompt":"p"}'),
                ('{"model":"m","prompt":"p"}', "7", '{"priority":7,"model":"m","prompt":"p"}'),
                ('{"model":"m","prompt":"p","priority":2}', "high",
                 '{"model":"m","prompt":"p","priority":2}'),  # the body's own wins
                ('{"model":"m","prompt":"p"}', "normal", '{"model":"m","prompt":"p"}'),
            ]:
                code, _, _ = http_request(px.port, "POST", "/v1/completions", body=raw,
                                          headers={"X-Priority": header})
                assert code == 200
                assert fake.bodies[-1].decode() == want, (header, fake.bodies[-1], want)
    finally:
        fake.stop()


def check_configured_models_override_discovery():
    s = start_sim("--model", "base", "--lora-modules", "sql=/adapters/sql", "--speed", "50")
    text = make_config([s]) + "models = base\n"
    with start_proxy(config_text=text) as px:
        assert completion(px.port, "base")[0] == 200
        code, _, body = completion(px.port, "sql")
        assert code == 404 and "sql" in json.loads(body)["error"]["message"], body
    # Discovered: the adapter is served (vLLM lists it with its parent).
    with start_proxy([s]) as px:
        assert completion(px.port, "sql")[0] == 200
        m = {x["id"]: x for x in status(px)["models"]}
        assert m["sql"]["parent"] == "base" and m["base"]["parent"] is None, m
        # One base model (the adapter does not count): no "model" is fine.
        code, _, _ = http_request(px.port, "POST", "/v1/completions",
                                  body=json.dumps({"prompt": "hi", "max_tokens": 2}))
        assert code == 200


run_checks([
    ("a two-model fleet routes every request by model", check_two_model_fleet_routes_by_model),
    ("unknown model 404 / missing model 400", check_unknown_and_missing_model),
    ("alias: weighted split, rewritten model", check_alias_split_and_rewrite),
    ("alias rewrite keeps the rest of the body", check_rewrite_keeps_the_rest_of_the_body),
    ("X-Priority inserted for scheduling = priority", check_priority_header_reaches_priority_replicas),
    ("models = overrides /v1/models", check_configured_models_override_discovery),
])
