"""The service's entry point, as bentofile.yaml and `bentoml serve service.service:RnnServe` name
it: the BentoML service itself is service/http/service.py."""

from service.http.service import RnnServe

__all__ = ["RnnServe"]
