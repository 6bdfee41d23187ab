"""Build ember's C extensions (pools, channels, spawn helper) with Cython.

All C is compiled with -std=c11 -Wall -Wextra and must stay warning-free.
Set EMBER_SANITIZE=address,undefined (or thread) to build instrumented
extensions (used only for debugging; the C tests have their own sanitizer
build, see tests/c/).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-O2", "-fvisibility=hidden", "-D_GNU_SOURCE"]
# Cython's generated code is not held to our warning policy; our own .c is.
CYTHON_FLAGS = ["-Wno-unused-function", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
LINK = []
san = os.environ.get("EMBER_SANITIZE")
if san:
    C_FLAGS += [f"-fsanitize={san}", "-fno-omit-frame-pointer", "-g"]
    LINK += [f"-fsanitize={san}"]

INC = ["src/ember/common_c", "src/ember/pools_c", "src/ember/channels_c"]


def ext(name, sources, libraries=("rt",)):
    return Extension(
        name,
        sources=sources,
        include_dirs=INC,
        extra_compile_args=C_FLAGS + CYTHON_FLAGS,
        extra_link_args=LINK,
        libraries=list(libraries),
    )


# pool.c and slots.c (the process-slots writer) are compiled once, into
# _pools, which exports their functions in a PyCapsule; channels and sync
# call them through pool_api_import.c (see src/ember/common_c/pool_api.h).
extensions = [
    ext("ember.pools_c._pools",
        ["src/ember/pools_c/_pools.pyx", "src/ember/pools_c/pool.c", "src/ember/common_c/slots.c",
         "src/ember/pools_c/pool_api_export.c"]),
    ext("ember.channels_c._channels",
        ["src/ember/channels_c/_channels.pyx", "src/ember/channels_c/channel.c",
         "src/ember/channels_c/wakeboard.c", "src/ember/common_c/pool_api_import.c",
         # the join wake board's lock (a copy of sync.c's code: its symbols
         # are hidden, its state is per-process caches only, refreshed in a
         # raw clone's child by _channels._after_raw_clone)
         "src/ember/sync_c/sync.c"],
        # dlopen/dlsym: the direct path's receive calls the libzmq that pyzmq
        # loaded (channels_c/_zdirect.pxi); nothing of zmq at build time
        libraries=("rt", "dl")),
    ext("ember.sync_c._sync",
        ["src/ember/sync_c/_sync.pyx", "src/ember/sync_c/sync.c", "src/ember/sync_c/pooldict.c",
         "src/ember/common_c/pool_api_import.c"]),
    ext("ember.shepherd._spawn", ["src/ember/shepherd/_spawn.pyx", "src/ember/shepherd/spawn.c",
                                  "src/ember/shepherd/spares.c",
                                  "src/ember/shepherd/quiet.c",
                                  "src/ember/shepherd/outboard.c"]),
]

# Development aid: EMBER_ONLY=pools,channels builds just those extensions.
only = os.environ.get("EMBER_ONLY")
if only:
    keep = {w.strip() for w in only.split(",")}
    extensions = [e for e in extensions if e.name.split(".")[-1].lstrip("_") in keep]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"embedsignature": True},
    ),
)
