"""The load generator and deployment shared by ``benchmarks/loadgen.py``, ``bench_faults.py``,
``bench_soak.py`` and their CI versions (``tests/integration/test_faults.py``, ``test_soak.py``):

- ``deploy``: redis-server, ``quicvoice-lb`` and ``quicvoice serve`` processes from one TOML file;
- ``calls``: one real call on the public client API and what the server says it received;
- ``worker`` / ``generator``: calls spread over K worker processes (planned, or churned);
- ``procstat``: RSS and CPU of process trees from ``/proc``; ``report``: figures and tables;
- ``echo_calls``: the echo calls of ``bench_calls.py`` and ``bench_ngtcp2.py`` (websocket, the
  project's client, ngtcp2 client connections), run in load processes apart from the backend.
"""
