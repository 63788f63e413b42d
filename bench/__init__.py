"""katiba-cache's benchmark harness: ``python -m bench`` (see ``bench/__main__.py``).

Modules: ``procs`` (the services it starts and stops, tools, CPU accounting), ``context`` (settings per
mode, the running services, HTTP helpers), ``wrk`` (wrk runs and their reports; Lua scripts in
``bench/lua``), ``loadgen`` (a Python load generator for the smoke mode), ``workload`` (the katiba mix,
users, tokens, Zipf), ``scenario_hits`` (a), ``scenario_miss`` (b), ``scenario_katiba`` (c),
``scenario_purge`` (d), ``scenario_coalesce`` (e), ``scenario_keyspace`` (f), ``report`` (final line,
targets, plots) and ``markdown`` (BENCHMARKS.md). Beside the benchmarks, ``conformance`` runs the HTTP
caching conformance suite (cache-tests) against the proxy with the same services
(``python -m bench.conformance``).
"""
