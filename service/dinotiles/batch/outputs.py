"""Where batch results go: a directory, or an object store (``s3://bucket/prefix``).

Both take a finished local folder per source and publish it with ``item.json`` last, so an item
is either complete or absent for a rerun; both list the published items for the collection.
S3 uses boto3's usual configuration (``AWS_*`` variables, ``AWS_ENDPOINT_URL`` for a non-AWS
store such as MinIO or moto's server in the tests).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Protocol

from dinotiles.core.errors import BadInput

FILES = ("clusters.tif", "cluster_ids.tif", "item.json")  # item.json last: it marks the item done


class Output(Protocol):
    url: str

    def is_done(self, item_id: str, expected: dict[str, Any]) -> bool: ...

    def publish(self, item_id: str, folder: Path) -> None: ...

    def items(self) -> list[tuple[str, dict[str, Any]]]: ...

    def write_json(self, name: str, data: dict[str, Any]) -> None: ...

    def read_json(self, name: str) -> dict[str, Any] | None: ...

    def children(self) -> list[str]: ...

    def href(self, *parts: str) -> str: ...


def _same(item: dict[str, Any], expected: dict[str, Any]) -> bool:
    props = item.get("properties", {})
    return all(props.get(k) == v for k, v in expected.items())


class LocalOutput:
    def __init__(self, root: Path, create: bool = True) -> None:
        self.root = root
        self.url = str(root)
        if create:
            root.mkdir(parents=True, exist_ok=True)

    def is_done(self, item_id: str, expected: dict[str, Any]) -> bool:
        folder = self.root / item_id
        if not all((folder / f).exists() for f in FILES):
            return False
        try:
            return _same(json.loads((folder / "item.json").read_text()), expected)
        except (OSError, json.JSONDecodeError):
            return False

    def publish(self, item_id: str, folder: Path) -> None:
        target = self.root / item_id
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(folder), str(target))

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        """(folder, item) of every published item directly under the root; unreadable ones are skipped."""
        found = []
        for path in sorted(self.root.glob("*/item.json")):
            item = self.read_json(f"{path.parent.name}/item.json")
            if item is not None:
                found.append((path.parent.name, item))
        return found

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        (self.root / name).write_text(json.dumps(data, indent=1) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / name).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def children(self) -> list[str]:
        """Sub-folders (each may be a collection of its own)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def href(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))


class S3Output:
    def __init__(self, url: str) -> None:
        import boto3

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BadInput(f"{url} names no bucket")
        self.url, self.bucket, self.prefix = url.rstrip("/"), bucket, prefix.strip("/")
        self.s3 = boto3.client("s3")

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def is_done(self, item_id: str, expected: dict[str, Any]) -> bool:
        item = self._get_json(self._key(item_id, "item.json"))
        if item is None or not _same(item, expected):
            return False
        for name in FILES[:-1]:
            try:
                self.s3.head_object(Bucket=self.bucket, Key=self._key(item_id, name))
            except self.s3.exceptions.ClientError:
                return False
        return True

    def publish(self, item_id: str, folder: Path) -> None:
        for name in FILES:
            self.s3.upload_file(str(folder / name), self.bucket, self._key(item_id, name))
        shutil.rmtree(folder, ignore_errors=True)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        found = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key() and self._key() + "/"
        )
        root = self._key() and self._key() + "/"
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                parts = key[len(root) :].split("/")
                if len(parts) == 2 and parts[1] == "item.json":  # items of this collection, not of nested ones
                    item = self._get_json(key)
                    if item is not None:
                        found.append((parts[0], item))
        return sorted(found, key=lambda pair: pair[0])

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        body = (json.dumps(data, indent=1) + "\n").encode()
        self.s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=body, ContentType="application/json")

    def read_json(self, name: str) -> dict[str, Any] | None:
        return self._get_json(self._key(name))

    def children(self) -> list[str]:
        prefix = self._key() and self._key() + "/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        return sorted(cp["Prefix"][len(prefix) :].strip("/") for page in pages for cp in page.get("CommonPrefixes", []))

    def href(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self._key(*parts)}"


def open_output(url: str | Path, create: bool = True) -> Output:
    """Where results go (``create``: make a missing directory) or are read from."""
    text = str(url)
    return S3Output(text) if text.startswith("s3://") else LocalOutput(Path(text), create)
