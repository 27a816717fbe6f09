"""Imported once, in the forkserver: load the user's main module there, so that every
worker forked from it starts with the module loaded instead of re-importing it (tens of
ms per worker). multiprocess on Python 3.11 never hands its forkserver the main path
itself (its preload looks for a 'main_path' key that the preparation data names
'init_main_from_path'), so the Farm passes the path in MAIN_PATH_ENV."""

import os

from multiprocess import process, spawn

MAIN_PATH_ENV = "CARMP_FORKSERVER_MAIN"


def _import_main() -> None:
    path = os.environ.pop(MAIN_PATH_ENV, None)
    if not path:
        return
    process.current_process()._inheriting = True
    try:
        spawn.import_main_path(path)
    except Exception:
        pass  # each worker then imports the main module itself, as multiprocess would
    finally:
        del process.current_process()._inheriting


_import_main()
