#!/usr/bin/env python3
"""bench/routing/bound.py [RHO ...]: the best mean end-to-end latency a router
can reach in the "slow" scenario by choosing only HOW MANY requests each replica
gets, relative to a router that equalises the requests in flight per replica
(nginx least_conn), under the simulator's engine model, when every request is
alike. No measurement: arithmetic.

What it does NOT bound: which requests go where. The benchmark's workload is
not alike: 5% long documents (5k-15k prompt tokens) carry most of the prefill
work, and every prefill chunk lengthens the steps of every request decoding on
that replica. Keeping long prefills away from replicas with many decodes (what
[routing] imposed_weight does) lowers the step time most requests see, which
this model cannot express. Measured: imposed_weight = 1 gave mean e2e x0.82 of
least_conn in the slow scenario (bench/RESULTS.md), below this "bound". So read
it as: balancing counts alone buys at most ~2.5% at 75% load.

Model (tools/vllm-sim; the same shape as vLLM with chunked prefill). A replica
runs steps of base + per_token * tokens_in_step seconds. Each request costs
P + D tokens of step budget (prompt plus one per output token), so a replica
receiving lam requests/s processes lam * (P + D) tokens/s, and in steady state
step = base + per_token * lam * (P + D) * step, i.e.

    step(rho) = base / (1 - rho),    rho = per_token * lam * (P + D)

(rho: the replica's utilisation of its token throughput). A request's
end-to-end time is about (D + prefill steps) * step, so the mean over requests
is proportional to  sum_i lam_i * step_i / sum_i lam_i.

Scenario: three replicas (base b, capacity C) and one twice as slow (2b, C/2).
least_conn equalises in-flight requests n_i = lam_i * D * step_i, which with
these numbers gives every replica the same rho (the measured runs show it:
mean running 58/58/58/59). The optimum split minimises the mean above for the
same total rate: d/dlam_i [lam_i step_i] = b_i / (1 - rho_i)^2 equal for all i.

Prints, per utilisation rho of the least_conn split, the optimum's ratio to
least_conn, and the ratio when the slow replica is not used at all.
"""

import sys


def mean_step(rho_fast, rho_slow, base=1.0):
    """Request-weighted mean step (units of the fast replica's base)."""
    lam_f, lam_s = 3 * rho_fast, 0.5 * rho_slow
    cost = lam_f * base / (1 - rho_fast) + lam_s * 2 * base / (1 - rho_slow)
    return cost / (lam_f + lam_s)


def bound(rho):
    load = 3.5 * rho  # in units of one fast replica's capacity
    least_conn = mean_step(rho, rho)
    best, at = float("inf"), None
    steps = 20000
    for k in range(1, steps):
        rf = k / steps
        rs = (load - 3 * rf) / 0.5
        if rf >= 1 or not 0 <= rs < 1:
            continue
        m = mean_step(rf, rs)
        if m < best:
            best, at = m, (rf, rs)
    unused = mean_step(load / 3, 0) / least_conn if load / 3 < 1 else float("inf")
    return best / least_conn, at, unused


def main():
    rhos = [float(a) for a in sys.argv[1:]] or [0.1, 0.3, 0.5, 0.7, 0.75, 0.83, 0.9]
    print("| utilisation (least_conn split) | best possible mean e2e vs least_conn "
          "| optimum split rho fast / slow | slow replica unused |")
    print("|---|---|---|---|")
    for rho in rhos:
        ratio, (rf, rs), unused = bound(rho)
        print("| %.2f | x%.3f | %.3f / %.3f | %s |" % (
            rho, ratio, rf, rs, "x%.3f" % unused if unused != float("inf") else "overloaded"))


if __name__ == "__main__":
    main()
