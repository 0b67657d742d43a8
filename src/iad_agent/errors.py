"""The typed errors of the library API, in one light module (no numpy, torch or PIL).

Callers turn them into messages (the CLI) or HTTP status codes (the service); every message
names the offending file, folder, product or option. Image problems are
:class:`iad_agent.imageio.ImageError`.
"""

from __future__ import annotations


class IADError(Exception):
    """Base of the errors :mod:`iad_agent.api` raises on purpose."""


class RegistrationError(IADError, ValueError):
    """Registration refused; the message names the offending file or folder."""


class ProductNotFound(IADError, LookupError):
    """No product of that name is registered in the workspace.

    Attributes:
        name: the product asked for.
        workspace: the workspace folder that was searched.
        registered: the products that are registered there.
    """

    def __init__(self, name: str, workspace: object, registered: list[str]) -> None:
        self.name, self.workspace, self.registered = name, workspace, list(registered)
        known = ", ".join(self.registered) or "none"
        super().__init__(f"product {name!r} is not registered in {workspace} (registered: {known}); "
                         f"run `iad register {name} --normals DIR` first")

    def __reduce__(self):  # noqa: ANN204 - picklable across worker processes despite the custom __init__
        return type(self), (self.name, self.workspace, self.registered)


class ProductError(IADError, RuntimeError):
    """A stored product exists but cannot be loaded (damaged or from an incompatible version)."""


class ConcurrentRegistration(RegistrationError):
    """Another registration stored a new version of the product while this one was computed;
    nothing was overwritten (run the registration again to add to the current version)."""


class DamagedProduct(ProductError):
    """A stored product's file is missing, truncated or of the wrong type; the message names
    the file and how to repair the product."""


class WorkspaceError(RegistrationError):
    """The workspace is not a writable folder (a file, read-only, no permission), or a write
    into it failed; the message names the folder. Checked before any work starts. A kind of
    RegistrationError: the change to the stored products is refused."""


class PolicyConfigError(IADError, ValueError):
    """An unknown policy or tool name, or backend options the chosen policy cannot work with."""


class MissingExtra(IADError, ImportError):
    """A feature needs an optional part of the install (``pip install 'iad-agent[<extra>]'``)."""
