"""One file per mixer. Every module here is imported on package import, so a new file
registers itself with ``@MIXERS.register`` and the registry-driven tests cover it at once."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
