"""Not a package: the root of a clone of the ``unroll`` repository.

Python imports this file only when it runs in the folder that *contains* a clone named
``unroll/`` (that folder is first on ``sys.path``, so the clone would shadow the installed
package, and without this file be taken for an empty namespace package: ``cannot import name
'L1' from 'unroll' (unknown location)``). It loads the installed package in its place, or says
how to install it. The package itself is ``unroll/`` inside the clone (with ``models/``,
``data/`` and ``train/`` mapped to ``unroll.models`` ... by ``pyproject.toml``).
"""

import importlib as _importlib
import os as _os
import sys as _sys


def _load_installed():
    clone = _os.path.dirname(_os.path.abspath(__file__))
    outside = _os.path.dirname(clone)
    name = __name__
    del _sys.modules[name]
    saved = list(_sys.path)
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != outside]
    try:
        return _importlib.import_module(name)
    except ImportError as exc:
        _sys.modules.pop(name, None)
        raise ImportError(
            f"{name}: {clone} is a clone of the repository, not the package, and no installed '{name}' was found: "
            f"install it (pip install -e {clone}) or run from another folder") from exc
    finally:
        _sys.path[:] = saved


if __name__ == "unroll":  # (pytest, collecting from the clone's root, imports this file under another name)
    _sys.modules[__name__] = _load_installed()
