"""How ``edgekit serve`` meets the devices: one small module per transport.

A transport moves bytes and nothing else. It subscribes to the devices' chunk requests and reports
(``protocol.subscription``), hands each chunk request to ``PackageServer.answer`` and publishes the
response, and hands each report to ``Ingest.accept`` with a callback that acknowledges the message to the
broker once it is stored. It counts what it could not parse in ``server.refused`` and what failed
unexpectedly in ``server.failures``; everything else (the package index, the store, the heartbeat, the
reconciler) belongs to the server.

- :mod:`.mqtt`: any MQTT broker; a persistent session or a shared subscription for several workers.
- :mod:`.nats`: a NATS cluster's native port; a queue group for requests, a durable JetStream consumer for
  reports.

Adding one (say AMQP): a module with a class taking ``(server, …)`` with ``start()`` and ``stop()``, and the
line in ``PackageServer.start`` that picks it.
"""
