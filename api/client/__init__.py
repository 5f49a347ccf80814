"""The vitq client library: talks to a running service over HTTP and imports nothing from the server."""

from api.client.http import FINISHED_STATUSES, VitqClient, VitqError, default_url

__all__ = ["FINISHED_STATUSES", "VitqClient", "VitqError", "default_url"]
