"""Small service limits, so that the tests can cross them with small files."""

from aladin.service.config import ServiceConfig

LIMITS = ServiceConfig(queue_size=8, max_upload_bytes=20_000, max_pixels=256 * 256, max_k=20)
#: The service answers only requests naming a loopback host (or an allowed one); TestClient's default is not.
LOCAL = "http://127.0.0.1"
