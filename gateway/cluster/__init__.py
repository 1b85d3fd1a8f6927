"""
Several gateways as one over NATS JetStream (CONTRACT §9).

- :mod:`gateway.cluster.connection`: the one NATS connection (nats-py on its own
  loop thread, bridged to the reactor with Deferreds);
- :mod:`gateway.cluster.subjects`: the subjects and stream names;
- :mod:`gateway.cluster.sink`: the ``nats`` sink, events into the stream ``CPMI_EVENTS``;
- :mod:`gateway.cluster.service`: the ``[cluster]`` part of the service tree.
"""
