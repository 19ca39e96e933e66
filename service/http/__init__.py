"""The front-ends: the BentoML service, the v1 / v2 / stream apps, OpenAPI, middleware,
the BentoML compatibility module and the network limits. Imports engine/, model/, imaging/."""
