"""The HTTP service (`connvo-agent serve`): bots sent into meetings on request, reporting to the
caller with signed webhooks; behind the `service` extra (`pip install 'connvo-agent[service]'`).

`agent.service.webhooks` delivers the webhooks from a durable outbox (Standard Webhooks). Nothing
is imported here, so that `agent.service` imports without the extra.
"""
