"""The service's settings, its request and response models, and the decoding of a query image."""

import functools
import re
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serve import webhook

Status = Literal["queued", "running", "succeeded", "failed"]  # a job's (serve/lifecycle.py)


BUCKET_RE = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # plus the rules in VideoRequest._one_source
URL_RE = r"^https?://[!-~]+$"  # printable ASCII, no space, tab or control character
class ServeSettings(BaseSettings):
    """The service's own settings (env ``FRAMEPIPE_SERVE_<NAME>``); the pipeline's come from ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="FRAMEPIPE_SERVE_", frozen=True, extra="ignore")

    api_token: SecretStr = Field(description="Bearer token that every request must carry.")
    webhook_secret: SecretStr = Field(
        description="Standard Webhooks secret(s), whsec_<base64>; several, comma-separated, during a rotation (each "
        "delivery is signed with all of them).")
    webhook_allowed_hosts: str = Field("", description="Comma-separated hosts webhooks may go to (*.x.com ok).")
    webhook_ports: str = Field("80,443", description="Ports webhook URLs may name (comma-separated; * for any).")
    source_allowed_hosts: str = Field("", description="Comma-separated hosts that `url` sources may name "
                                      "(empty: S3 sources only). Keeps the service from fetching arbitrary URLs.")
    allow_private_networks: bool = Field(
        False, description="Let webhooks and url sources reach loopback, link-local and private addresses (tests, "
        "internal receivers). Off: their hosts must resolve to public addresses only.")
    output: str = Field(description="Where outputs go: s3://bucket/prefix or a local directory.")
    presign_seconds: int = Field(0, ge=0, description="> 0: results also carry presigned URLs valid this long.")
    job_timeout_s: float = Field(900.0, gt=0, description="A job running longer fails with a timeout.")
    max_body_bytes: int = Field(65536, ge=1024, description="Larger request bodies are refused (413) unread.")
    search_max_bytes: int = Field(10 * 1024**2, ge=1024, description="POST /v1/search: larger images (uploaded or "
                                  "in S3) are refused (413), uploads unread.")
    search_max_side: int = Field(2560, ge=256, description="POST /v1/search: an image is decoded to at most this "
                                 "many pixels on its longer side (JPEGs at a reduced scale straight away).")
    search_concurrency: int = Field(2, ge=1, description="POST /v1/search requests read, decoded and analysed at "
                                    "once per ingress replica; the others wait, their bodies unread (bounds memory).")
    webhook_max_attempts: int = Field(5, ge=1, le=20, description="Deliveries tried per webhook (a 2xx ends them).")
    webhook_backoff_s: float = Field(
        1.0, ge=0, description="Backoff base: a retry waits up to this times 2^(attempt-1) (full jitter).")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Connect/read timeout of one delivery.")

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr) -> SecretStr:
        for secret in value.get_secret_value().split(","):
            try:
                webhook.sign([secret.strip()], "check", 0, b"")
            except Exception:
                raise ValueError("each webhook secret must be whsec_<base64>") from None
        return value

    @property
    def secrets(self) -> list[str]:
        return [s.strip() for s in self.webhook_secret.get_secret_value().split(",") if s.strip()]

    @property
    def allowed_hosts(self) -> list[str]:
        return [h.strip() for h in self.webhook_allowed_hosts.split(",") if h.strip()]

    @property
    def source_hosts(self) -> list[str]:
        return [h.strip() for h in self.source_allowed_hosts.split(",") if h.strip()]


@functools.lru_cache(maxsize=1)
def serve_settings() -> ServeSettings:
    return ServeSettings()


class RequestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sample_fps: float | None = Field(None, gt=0, le=5)
    sampling: Literal["exact", "keyframes"] | None = None
    require_faces: bool | None = None


def check_object(bucket: str, key: str) -> None:
    """The rules of S3 bucket names and of plain object keys that a pattern alone cannot say."""
    if ".." in bucket or bucket.startswith("xn--") or re.fullmatch(r"[0-9.]+", bucket):
        raise ValueError("bucket is not a valid S3 bucket name")
    parts = key.split("/")
    if key.startswith("/") or ".." in parts or "." in parts or any(ord(c) < 32 for c in key):
        raise ValueError("key must be a plain object key (no leading '/', no '.' or '..' parts)")


class VideoRequest(BaseModel):
    """A video in S3 (``bucket`` + ``key``) or at an http(s) ``url``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    bucket: str | None = Field(None, min_length=3, max_length=63, pattern=BUCKET_RE)
    key: str | None = Field(None, min_length=1, max_length=1024)
    url: str | None = Field(None, max_length=4096, pattern=URL_RE)
    webhook_url: str | None = Field(None, max_length=2048, pattern=URL_RE)
    settings: RequestSettings | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bucket is None) != (self.key is None):
            raise ValueError("give both bucket and key")
        if (self.bucket is None) == (self.url is None):
            raise ValueError("give either bucket and key, or url")
        if self.bucket is not None:
            check_object(self.bucket, self.key)
        for name in ("url", "webhook_url"):
            value = getattr(self, name)
            if value is not None:
                try:
                    urlparse(value).port
                except ValueError:
                    raise ValueError(f"{name} is not a valid URL") from None
        return self

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else str(self.url)


class SearchRequest(BaseModel):
    """A photo in S3 to search with (or send the image itself as the body: image/jpeg, image/png, image/webp)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    bucket: str = Field(min_length=3, max_length=63, pattern=BUCKET_RE)
    key: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _plain(self):
        check_object(self.bucket, self.key)
        return self


IMAGE_TYPES = {"image/jpeg": (b"\xff\xd8\xff",), "image/png": (b"\x89PNG\r\n\x1a\n",), "image/webp": (b"RIFF",)}


def decode_image(data: bytes, max_pixels: int, max_side: int = 2560):
    """BGR pixels of an uploaded JPEG, PNG or WebP (EXIF orientation applied), at most ``max_side`` pixels on the
    longer side, or ValueError. The size is read from the header first: a small file that would decode to a huge
    picture is refused undecoded; a JPEG is decoded straight at a reduced scale (libjpeg's DCT scaling)."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    if not any(data.startswith(m) for magics in IMAGE_TYPES.values() for m in magics):
        raise ValueError("not a JPEG, PNG or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError(f"image of {width}x{height} pixels is over the limit")
            im.draft("RGB", (max_side, max_side))  # JPEG: decoded at 1/2, 1/4 or 1/8 scale when that is enough
            im.thumbnail((max_side, max_side))  # others: decoded once, reduced in place
            image = ImageOps.exif_transpose(im)  # on the small picture
            if image.mode != "RGB":
                image = image.convert("RGB")
    except ValueError:
        raise
    except Exception:
        raise ValueError("not a readable image") from None
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


class Accepted(BaseModel):
    job_id: str
    status: Status  # not "queued" only for a repeated Idempotency-Key
    status_url: str
