"""The package in SQL mode inside this process, beside the native one.

The extension's exec slot can run again: exec_instance() makes a second
instance of the module, which chooses its route anew (its own
WalSafeConnection type, registry, stats(), sqlite_api()).  The package's
Python API is bound to the instance it imported, so package_over() loads
the package's modules once more, under another name, on top of the new
instance: the fixture ``hkn`` (conftest.py) runs the tests meant for both
modes against the package itself and against such a copy in SQL mode,
exercising the very same source.  That needs every import inside the
package to be relative (``from . import _native``), which the package keeps.

An instance lives until the process ends: os.register_at_fork has no way
back, and its atexit closer (which closes its connections still open at
exit, as the package's does) stays registered.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def exec_instance(path, mode=None):
    """A new instance of the extension module at `path`: its exec slot runs
    again (with HERMES_KANBAN_NATIVE_MODE=mode when given).  The package's
    own instance is untouched."""
    previous = os.environ.pop("HERMES_KANBAN_NATIVE_MODE", None)
    if mode is not None:
        os.environ["HERMES_KANBAN_NATIVE_MODE"] = mode
    try:
        spec = importlib.util.spec_from_file_location("hermes_kanban_native._native", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        os.environ.pop("HERMES_KANBAN_NATIVE_MODE", None)
        if previous is not None:
            os.environ["HERMES_KANBAN_NATIVE_MODE"] = previous


def package_over(package, instance, name):
    """The modules of `package` loaded again as the package `name`, with
    `instance` as its ``_native``: the package's whole API, bound to that
    instance.  Made once per name; later calls return the same module."""
    if name in sys.modules:
        return sys.modules[name]
    directory = os.path.dirname(package.__file__)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(directory, "__init__.py"), submodule_search_locations=[directory])
    module = importlib.util.module_from_spec(spec)
    # Relative imports resolve through sys.modules: the copy's submodules
    # (fds, stray) load under `name` and find `instance` as their _native.
    sys.modules[name] = module
    sys.modules[f"{name}._native"] = instance
    try:
        spec.loader.exec_module(module)
        unbound = [sub.__name__ for sub in (module, module.fds, module.stray)
                  if sub._native is not instance]
        if unbound:
            raise ImportError(f"{unbound} did not bind the instance given to package_over()")
    except BaseException:
        for key in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
            del sys.modules[key]
        raise
    return module
