"""Finished files (the mp4 and its thumbnail) by video id and variant.

Two backends stand behind one interface: a local folder (the default, one
gateway node) and an S3-compatible bucket (several nodes, or storage that
outlives the machines). `open_artifact_store` picks one from a URL.

Video ids are checked with `ids.check_video_id` before they become part
of a path or key, so "../x" can never name a file outside the store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol, get_args
from urllib.parse import unquote, urlsplit

from serve_app.errors import InvalidRequest, NotFound, ServiceError
from serve_app.ids import check_video_id

Variant = Literal["video", "thumbnail"]
VARIANTS: tuple[Variant, ...] = get_args(Variant)
FILE_NAMES: dict[str, str] = {"video": "video.mp4", "thumbnail": "thumbnail.jpg"}
MEDIA_TYPES: dict[str, str] = {"video": "video/mp4", "thumbnail": "image/jpeg"}

# SigV4 presigned URLs are refused by S3 beyond seven days.
MAX_PRESIGN_S = 7 * 24 * 3600


def check_variant(variant: str) -> str:
    # Variant is a Literal only for type checkers; a plain string from a query
    # parameter must not reach a dict lookup as a KeyError (a 500).
    if variant not in FILE_NAMES:
        raise InvalidRequest(f"variant={variant!r} is not one of {list(VARIANTS)}", param="variant")
    return variant


def media_type(variant: Variant) -> str:
    """The Content-Type a variant is served with."""
    return MEDIA_TYPES[check_variant(variant)]


def _missing(video_id: str, variant: str) -> NotFound:
    return NotFound(f"video {video_id!r} has no {variant!r} content", param="variant")


class ArtifactStore(Protocol):
    def put(self, video_id: str, variant: Variant, data: bytes) -> None: ...

    def get(self, video_id: str, variant: Variant) -> bytes:
        """The stored bytes; NotFound (param "variant") if there are none."""
        ...

    def local_path(self, video_id: str, variant: Variant) -> Path | None:
        """A file to stream (FileResponse), or None where the bytes are remote."""
        ...

    def exists(self, video_id: str, variant: Variant) -> bool: ...

    def delete(self, video_id: str) -> None:
        """Remove every variant; deleting what is not there is not an error."""
        ...

    def copy(self, source_id: str, target_id: str) -> tuple[str, ...]:
        """Give `target_id` its own copy of every variant `source_id` has, inside the store
        (no bytes through this process); returns the variants copied. Deleting either id
        afterwards leaves the other's files whole."""
        ...

    def redirect_url(self, video_id: str, variant: Variant, expires_s: int) -> str | None:
        """A URL clients fetch the bytes from themselves, valid for `expires_s` (NotFound if there
        are none), or None where the gateway serves them (`local_path`)."""
        ...


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _dir(self, video_id: str) -> Path:
        return self.root / check_video_id(video_id)

    def _path(self, video_id: str, variant: Variant) -> Path:
        directory = self._dir(video_id)
        return directory / FILE_NAMES[check_variant(variant)]

    def put(self, video_id: str, variant: Variant, data: bytes) -> None:
        write_atomically(self._path(video_id, variant), data)

    def get(self, video_id: str, variant: Variant) -> bytes:
        path = self._path(video_id, variant)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise _missing(video_id, variant) from None

    def local_path(self, video_id: str, variant: Variant) -> Path:
        path = self._path(video_id, variant)
        if not path.is_file():
            raise _missing(video_id, variant)
        return path

    def exists(self, video_id: str, variant: Variant) -> bool:
        return self._path(video_id, variant).is_file()

    def redirect_url(self, video_id: str, variant: Variant, expires_s: int) -> None:
        # The gateway streams local files itself (FileResponse reads them in a thread).
        self._path(video_id, variant)  # bad ids and variants fail here as everywhere else
        return None

    def delete(self, video_id: str) -> None:
        directory = self._dir(video_id)
        for name in FILE_NAMES.values():
            (directory / name).unlink(missing_ok=True)
            # Temp files a crashed put left behind would otherwise keep the
            # folder alive forever.
            for stale in directory.glob(f".{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            pass  # not empty: the record store may keep video.json beside us

    def copy(self, source_id: str, target_id: str) -> tuple[str, ...]:
        copied = []
        for variant in VARIANTS:
            source, target = self._path(source_id, variant), self._path(target_id, variant)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
            try:
                _link_or_copy(source, tmp)
                os.replace(tmp, target)
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                continue  # the source has no such variant (or was deleted meanwhile)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            copied.append(variant)
        if not copied:
            self.delete(target_id)  # the folder made above, now empty
        return tuple(copied)


def write_atomically(path: Path, data: bytes) -> None:
    """`data` as the file `path`: written under a unique temporary name, then renamed. Two
    writers of one file (a retried job, one image uploaded twice at once) never share a temp
    file, and os.replace makes readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link: no bytes move, and the file lives until its last name is deleted
    (a later `put` to the source replaces its name with a new file, so the copy keeps
    the old bytes). A real copy where links fail: another file system, one without
    hard links, or a file at its link limit (ext4 allows 65,000 names per file)."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, target)


class S3ArtifactStore:
    """Objects at s3://{bucket}/{prefix}/{video_id}/{file name}.

    Works against AWS S3 and S3-compatible servers (MinIO, R2, moto) through
    `endpoint_url`. Credentials come from boto3's usual chain unless a ready
    `client` is passed.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "videos",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        *,
        create_bucket: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError(f"bucket must be a non-empty name, got {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            # Imported here so the module (and the local backend) works
            # without boto3 installed; it is the `s3` extra.
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                # Path-style keeps presigned URLs on the endpoint's own host;
                # virtual-host style puts the bucket in the host name, which
                # S3-compatible servers on an IP or localhost cannot answer.
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path" if endpoint_url else "auto"},
                ),
            )
        self.client = client
        if create_bucket:
            self._create_bucket()

    def _create_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except self.client.exceptions.ClientError as exc:
            if _error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        region = self.client.meta.region_name
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        config = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        try:
            self.client.create_bucket(Bucket=self.bucket, **config)
        except self.client.exceptions.BucketAlreadyOwnedByYou:
            pass  # another replica created it between our head and create

    def key(self, video_id: str, variant: Variant) -> str:
        name = f"{check_video_id(video_id)}/{FILE_NAMES[check_variant(variant)]}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, video_id: str, variant: Variant, data: bytes) -> None:
        # A PUT replaces the whole object at once, so no temp-key dance.
        self.client.put_object(
            Bucket=self.bucket, Key=self.key(video_id, variant), Body=data, ContentType=media_type(variant)
        )

    def get(self, video_id: str, variant: Variant) -> bytes:
        key = self.key(video_id, variant)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            raise _missing(video_id, variant) from None
        body = response["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def local_path(self, video_id: str, variant: Variant) -> None:
        self.key(video_id, variant)  # bad ids and variants fail here as everywhere else
        return None

    def exists(self, video_id: str, variant: Variant) -> bool:
        key = self.key(video_id, variant)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            # HEAD responses carry no body, so the code is the bare status.
            if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def delete(self, video_id: str) -> None:
        keys = [self.key(video_id, variant) for variant in VARIANTS]
        # S3 answers deletes of absent keys with success, so this is idempotent.
        response = self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        errors = response.get("Errors") or []
        if errors:
            raise ServiceError(
                f"could not delete {len(errors)} of {len(keys)} objects of video {video_id!r} "
                f"in bucket {self.bucket!r}: {[(e.get('Key'), e.get('Code')) for e in errors]}",
                param="video_id",
            )

    def copy(self, source_id: str, target_id: str) -> tuple[str, ...]:
        copied = []
        for variant in VARIANTS:
            source, target = self.key(source_id, variant), self.key(target_id, variant)
            try:
                # Server-side (CopyObject): the bytes stay in the bucket. One request up to
                # 5 GB, far above any video here; metadata (the Content-Type) is copied.
                self.client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}
                )
            except self.client.exceptions.ClientError as exc:
                if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                    continue  # the source has no such variant (or was deleted meanwhile)
                raise
            copied.append(variant)
        return tuple(copied)

    def redirect_url(self, video_id: str, variant: Variant, expires_s: int) -> str:
        """The presigned URL of an object that exists (one HEAD request): a missing file is our own
        404, not the bucket's 403 at the end of a redirect. Blocking: call it off the event loop."""
        if not self.exists(video_id, variant):
            raise _missing(video_id, variant)
        return self.presigned_url(video_id, variant, expires_s)

    def presigned_url(self, video_id: str, variant: Variant, expires_s: int = 3600) -> str:
        """A GET URL that works without credentials until it expires.

        It does not check that the object exists (that would cost a request
        on every redirect); call `exists` first where a 404 must be ours.
        """
        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be in [1, {MAX_PRESIGN_S}], got {expires_s}")
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(video_id, variant)},
            ExpiresIn=expires_s,
        )


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


ALLOWED_URLS = "unset or '' (local folder under the data dir), 'file:///absolute/dir', 's3://bucket[/prefix]'"


def open_artifact_store(
    url: str | None,
    data_dir: Path,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    client: Any = None,
    create_bucket: bool = False,
) -> ArtifactStore:
    """The store a URL names.

    For s3:// the endpoint is `endpoint_url`, else $AWS_ENDPOINT_URL, else
    AWS itself; "s3://bucket" without a path keeps the default prefix "videos".
    """
    if not url:
        return LocalArtifactStore(data_dir / "videos")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"artifact store URL {url!r} must not have a query or fragment; allowed: {ALLOWED_URLS}")
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        # "file://dir" would put "dir" in the host part and silently drop it.
        if parts.netloc not in ("", "localhost") or not path.is_absolute():
            raise ValueError(f"artifact store URL {url!r} must name an absolute path, like 'file:///srv/videos'")
        return LocalArtifactStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"artifact store URL {url!r} has no bucket; allowed: {ALLOWED_URLS}")
        prefix = parts.path.strip("/")
        return S3ArtifactStore(
            parts.netloc,
            **({"prefix": prefix} if prefix else {}),
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
            region=region,
            client=client,
            create_bucket=create_bucket,
        )
    raise ValueError(f"artifact store URL {url!r} has unknown scheme {parts.scheme!r}; allowed: {ALLOWED_URLS}")
