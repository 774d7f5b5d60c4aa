"""The broker-info file: what one cluster needs to join the broker (its server, CA, the
broker namespace, that cluster's own token and the clusters' shared preshared key).

It is a secret (it holds a bearer token and the PSK): written 0600, never printed. Each
cluster gets a file of its own, so no cluster ever holds another's credentials.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wgcable.safetext import safe

KIND = "WgcableBrokerInfo"
_FIELDS = ("server", "certificateAuthorityData", "namespace", "clusterID", "token", "psk")


class BrokerInfoError(ValueError):
    """The file is missing, unreadable or malformed; the message names the field."""


@dataclass(frozen=True, repr=False)
class BrokerInfo:
    server: str
    ca_data: str  # base64 PEM
    namespace: str
    cluster_id: str
    token: str
    psk: str

    def __repr__(self) -> str:  # never the token or the PSK
        return f"BrokerInfo(server={self.server!r}, cluster_id={self.cluster_id!r})"

    def kubeconfig(self) -> str:
        """A kubeconfig for this cluster's gateways, with the CA and token inline (it
        travels in a Secret, where no file path would mean anything)."""
        user = f"wgcable-{self.cluster_id}"
        doc = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "broker", "cluster": {
                "server": self.server, "certificate-authority-data": self.ca_data}}],
            "users": [{"name": user, "user": {"token": self.token}}],
            "contexts": [{"name": "broker", "context": {
                "cluster": "broker", "user": user, "namespace": self.namespace}}],
            "current-context": "broker",
        }
        return yaml.safe_dump(doc, sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "server": self.server,
                "certificateAuthorityData": self.ca_data, "namespace": self.namespace,
                "clusterID": self.cluster_id, "token": self.token, "psk": self.psk}

    def write(self, path: Path) -> None:
        """Written whole to a new file, 0600, then renamed over ``path``."""
        header = (f"# wgcable broker info for cluster {self.cluster_id}: a secret (the "
                  "cluster's broker token and the PSK).\n# Give it to that cluster's "
                  "`wgcable join` only.\n")
        text = header + yaml.safe_dump(self.to_dict(), sort_keys=False)
        write_private(path, text)

    @classmethod
    def read(cls, path: Path) -> BrokerInfo:
        try:
            doc = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise BrokerInfoError(f"broker info {str(path)!r}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise BrokerInfoError(f"broker info {str(path)!r}: not YAML") from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise BrokerInfoError(f"broker info {str(path)!r}: not a broker info file "
                                  f"(kind must be {KIND})")
        values: dict[str, str] = {}
        for field in _FIELDS:
            value = doc.get(field)
            if not isinstance(value, str) or not value:
                raise BrokerInfoError(f"broker info {str(path)!r}: field {field!r} is "
                                      "missing or not a string")
            values[field] = value
        if not values["server"].startswith("https://"):
            raise BrokerInfoError(f"broker info {str(path)!r}: field 'server' is not an "
                                  f"https:// URL: {safe(values['server'])}")
        try:
            base64.b64decode(values["certificateAuthorityData"], validate=True)
        except ValueError:
            raise BrokerInfoError(f"broker info {str(path)!r}: field "
                                  "'certificateAuthorityData' is not base64") from None
        return cls(values["server"], values["certificateAuthorityData"],
                   values["namespace"], values["clusterID"], values["token"], values["psk"])


def write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, mode 0600 from the start (never readable by others, even for a
    moment), through a temporary name and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
