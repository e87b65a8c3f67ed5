"""The cim-server, split by role (uvicorn-style):

* ``node``: lifecycle (open-files limit, listening, start and stop) and admission of connections;
* ``peer``: the interfaces between transports and the node (``Peer``, ``PeerHost``);
* ``sessions``: who is connected and who is logged in, the one source of truth;
* ``ordering``: a peer's events handed on in arrival order;
* ``dispatch``: acting on events (login, send, ping, offline);
* ``quotas``: the abuse limits, per connection and per IP address;
* ``intake``: deliveries from the bus and to local users;
* ``sweeper``: login and heartbeat timeouts, slow consumers;
* ``delays``: delivering delayed messages when they come due;
* ``history``: answering in-band HISTORY requests (``cim.history`` reads the inbox);
* ``registration``: the registry entry and reclaiming users after a registry outage;
* ``tasks``: background work whose failures are counted and logged;
* ``metrics``: the node's counts and latencies for Prometheus, off the hot path.

Transports live in ``cim.protocols`` (``tcp``) and reach the node only through ``peer``.
"""
