"""Parties on separate hosts: the parties file, the session's handshake, each long-running
role's serve loop (`secptune serve`), and the data owner's `RemoteSession`.  This layer sits
above the engine (`mpc`), the models and tuning: it carries their work between hosts."""

from .developer import GELU_BOUNDS, DeveloperModel, load_developer_model
from .file import Parties, PartiesFileError
from .handshake import WIRE_VERSION, HandshakeRefused
from .owner import RemoteSession
from .serve import serve

__all__ = ["DeveloperModel", "GELU_BOUNDS", "HandshakeRefused", "Parties", "PartiesFileError", "RemoteSession",
           "WIRE_VERSION", "load_developer_model", "serve"]
